"""The paper's building blocks as nn.Modules, for use in any video model.

    SpatialAttention(D, K, d)      f (M, L, D)       -> pooled (M, K, D), attn (M, K, L)   Eqs. 1-3
    DiversityPenalty(kind)         attn (M, K, L)    -> scalar (or (M,))                   Eqs. 9-10
    FrameEnhancement(N, D)         x (B, N, K, D)    -> x_hat (B, N, K, D)                 Eq. 4, supp. Eqs. 1-4
    TemporalAttention(K, D)        x_hat (B, N, K, D) -> clip (B, K, D), t (B, N, K)        Eqs. 11-13

M frames (= B clips x N frames), L grid cells, D channels, K heads, d hidden units.  The
fused work runs in stafast.ops, so the backend choice (`with stafast.ops.backend(...)`,
STAFAST_BACKEND, or the fastest one for the device) applies to these modules too, and they
trace under torch.compile(fullgraph=True).  stafast.models.STA is built from them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import ops
from .ops._checks import choice
from .ops.diversity_penalty import KINDS, REDUCTIONS

__all__ = ["ENHANCE_SCALES", "DiversityPenalty", "FrameEnhancement", "SpatialAttention", "TemporalAttention"]

ENHANCE_SCALES = ("sqrt", "none")  # FrameEnhancement's scale of X X^T: 1/sqrt(D), or 1 (the supplementary's)


def _check_last_dim(module: str, name: str, x: Tensor, dims: int, layout: str, size: int, what: str) -> None:
    if x.dim() != dims or x.shape[-1] != size:
        raise ValueError(f"{module}: {name} must be {layout} with {what} = {size}, got shape {tuple(x.shape)}")


class SpatialAttention(nn.Module):
    """K spatial attention models over a grid of L feature vectors (Sec. 3.2).

    e_{n,k,l} = w'_{s,k}^T max(W_{s,k} f_{n,l} + b_{s,k}, 0) + b'_{s,k}     (Eq. 1)
    s_{n,k,l} = exp(e_{n,k,l}) / sum_j exp(e_{n,k,j})                       (Eq. 2, the receptive field)
    x_{n,k}   = sum_l s_{n,k,l} f_{n,l}                                      (Eq. 3, the gated feature)

    Parameters: `hidden` (Linear D -> K*d: W_{s,k}, b_{s,k} of all heads as one GEMM),
    `out_weight` (K, d): w'_{s,k}, `out_bias` (K,): b'_{s,k}.  Eqs. 2-3 run fused in
    stafast.ops.spatial_softmax_pool.

    forward(f (M, L, D)) -> pooled (M, K, D), attn (M, K, L).
    """

    def __init__(self, in_dim: int, num_heads: int = 6, hidden: int = 256):
        super().__init__()
        if min(in_dim, num_heads, hidden) < 1:
            raise ValueError(f"SpatialAttention: in_dim, num_heads and hidden must be >= 1, got "
                             f"{in_dim}, {num_heads}, {hidden}")
        self.in_dim, self.num_heads, self.hidden_dim = in_dim, num_heads, hidden
        self.hidden = nn.Linear(in_dim, num_heads * hidden)
        self.out_weight = nn.Parameter(torch.randn(num_heads, hidden) / math.sqrt(hidden))
        self.out_bias = nn.Parameter(torch.zeros(num_heads))

    def logits(self, f: Tensor) -> Tensor:
        """Eq. 1: f (M, L, D) -> e (M, K, L)."""
        _check_last_dim("SpatialAttention", "f", f, 3, "(M, L, D)", self.in_dim, "D")
        m, l, _ = f.shape
        h = torch.relu(self.hidden(f)).view(m, l, self.num_heads, self.hidden_dim)
        return torch.einsum("mlkd,kd->mkl", h, self.out_weight.to(h.dtype)) + self.out_bias.to(h.dtype)[:, None]

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        return ops.spatial_softmax_pool(self.logits(f).to(f.dtype), f)  # Eqs. 2-3

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_heads={self.num_heads}, hidden={self.hidden_dim}"


class DiversityPenalty(nn.Module):
    """The redundancy of the K receptive fields of each frame (Sec. 3.3), no parameters.

    Q  = ||R_n R_n^T - I||_F^2, R_n = sqrt(S_n)     (Eq. 9, kind="hellinger", the paper's)
    Q' = ||S_n S_n^T - I||_F^2                      (Eq. 10, kind="l2")

    S_n (K, L) are the rows attn[n] of SpatialAttention.  Reduced over the M frames by
    `reduction` ("mean", the paper's; "sum"; "none" gives (M,)).  Runs in
    stafast.ops.diversity_penalty (a finite gradient where attn has exact zeros).
    """

    def __init__(self, kind: str = "hellinger", reduction: str = "mean"):
        super().__init__()
        choice("DiversityPenalty", "kind", kind, KINDS)
        choice("DiversityPenalty", "reduction", reduction, REDUCTIONS)
        self.kind, self.reduction = kind, reduction

    def forward(self, attn: Tensor) -> Tensor:
        return ops.diversity_penalty(attn, self.kind, self.reduction)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, reduction={self.reduction!r}"


class FrameEnhancement(nn.Module):
    """E of Eq. 4: each gated feature pooled with those of the same head in the other frames
    (supplementary Sec. 3.2.1), per clip and head k with X_k = [x_{1,k} .. x_{N,k}]:

    Phi_k = scale * X_k^T X_k                                   (supp. Eq. 1; scale 1/sqrt(D) or 1)
    Psi   = W (.) exp(-|i - j| / sigma) + b                      (supp. Eq. 2; b added per column j)
    C_k   = row-softmax(Phi_k + Psi)                             (supp. Eq. 3)
    x_hat_{i,k} = FC(sum_j C_k[i, j] x_{j,k}) + x_{i,k}          (supp. Eq. 4 = Eq. 4: x_hat = E(x))

    Row i of C_k holds the contributions of all frames to frame i, as the supplementary's text
    says.  `scale="sqrt"` multiplies X^T X by 1/sqrt(D) (raw 2048-d dot products saturate the
    softmax); "none" follows the supplementary literally.  A per-row b would cancel in the row
    softmax, hence per column.  Parameters: `weight` W (N, N), `bias` b (N,), `fc` (Linear D -> D,
    shared by the K heads, zero-initialised so that E starts as the identity); buffer `decay`
    exp(-|i - j| / sigma).  The attention runs in stafast.ops.frame_attention.

    forward(x (B, N, K, D)) -> (B, N, K, D), with N = num_frames.
    """

    def __init__(self, num_frames: int, dim: int, sigma: float = 1.0, scale: str = "sqrt"):
        super().__init__()
        if num_frames < 1 or dim < 1:
            raise ValueError(f"FrameEnhancement: num_frames and dim must be >= 1, got {num_frames}, {dim}")
        choice("FrameEnhancement", "scale", scale, ENHANCE_SCALES)
        if not sigma > 0:
            raise ValueError(f"FrameEnhancement: sigma must be > 0, got {sigma}")
        self.num_frames, self.dim, self.sigma = num_frames, dim, sigma
        idx = torch.arange(num_frames, dtype=torch.float32)
        self.register_buffer("decay", torch.exp(-(idx[:, None] - idx[None, :]).abs() / sigma))
        self.weight = nn.Parameter(torch.ones(num_frames, num_frames))
        self.bias = nn.Parameter(torch.zeros(num_frames))
        self.scale = 1.0 / math.sqrt(dim) if scale == "sqrt" else 1.0
        self.fc = nn.Linear(dim, dim)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def prior(self) -> Tensor:
        """Psi (N, N) of supplementary Eq. 2."""
        return self.weight * self.decay + self.bias[None, :]

    def forward(self, x: Tensor) -> Tensor:
        _check_last_dim("FrameEnhancement", "x", x, 4, "(B, N, K, D)", self.dim, "D")
        if x.shape[1] != self.num_frames:
            raise ValueError(f"FrameEnhancement was built for num_frames={self.num_frames} (the N x N prior Psi) "
                             f"but got x with N={x.shape[1]}; shape {tuple(x.shape)}")
        return self.fc(ops.frame_attention(x, self.prior().to(x.dtype), self.scale)) + x

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, dim={self.dim}, sigma={self.sigma}, scale={self.scale:.4g}"


class TemporalAttention(nn.Module):
    """One temporal attention per head (Sec. 3.4): the N frames of a clip pooled per head k.

    e_{n,k} = w_{t,k}^T x_hat_{n,k} + b_{t,k}         (Eq. 11)
    t_{n,k} = exp(e_{n,k}) / sum_j exp(e_{j,k})       (Eq. 12 with the softmax the text means; printed
                                                       without exp, which is a typo)
    x_k     = sum_n t_{n,k} x_hat_{n,k}               (Eq. 13)

    Parameters: `weight` (K, D): w_{t,k}, `bias` (K,): b_{t,k}, both zero-initialised (uniform
    weights at the start).  The weights are computed in float32 for 16-bit inputs (autocast), in the
    input's precision otherwise.

    forward(x_hat (B, N, K, D)) -> clip (B, K, D), weights t (B, N, K).
    """

    def __init__(self, num_heads: int, dim: int):
        super().__init__()
        if num_heads < 1 or dim < 1:
            raise ValueError(f"TemporalAttention: num_heads and dim must be >= 1, got {num_heads}, {dim}")
        self.num_heads, self.dim = num_heads, dim
        self.weight = nn.Parameter(torch.zeros(num_heads, dim))
        self.bias = nn.Parameter(torch.zeros(num_heads))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_last_dim("TemporalAttention", "x", x, 4, "(B, N, K, D)", self.dim, "D")
        if x.shape[2] != self.num_heads:
            raise ValueError(f"TemporalAttention was built for K={self.num_heads} heads but got x with "
                             f"K={x.shape[2]}; shape {tuple(x.shape)}")
        e = torch.einsum("bnkd,kd->bnk", x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)  # Eq. 11
        t = torch.softmax(e, dim=1, dtype=torch.promote_types(e.dtype, torch.float32))       # Eq. 12
        return torch.einsum("bnk,bnkd->bkd", t.to(x.dtype), x), t                             # Eq. 13

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, dim={self.dim}"
