"""The spec: every op in plain PyTorch, written once.

Every backend (Triton, the C++/CUDA extension), test and benchmark is compared against these
functions; the `reference` backend runs them.  Each op's backward is spelled out too (the
`*_backward` functions), since autograd does not run inside a registered op; the tests check
them against autograd through the forward functions.
16-bit inputs are computed in float32 and cast back, as the fused kernels do.

Shapes: M frames (= clips x frames per clip), K spatial heads, L grid cells, D channels,
B clips, N frames per clip.
"""
from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def spatial_softmax_pool(logits: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    """Eqs. 2-3: attn = softmax_L(logits) (M, K, L); pooled = attn @ feats (M, K, D)."""
    dt = _compute_dtype(logits)
    attn = torch.softmax(logits.to(dt), dim=-1)
    pooled = torch.matmul(attn, feats.to(dt))
    return pooled.to(feats.dtype), attn.to(logits.dtype)


def spatial_softmax_pool_backward(grad_pooled: Tensor, grad_attn: Tensor, logits: Tensor,
                                  feats: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of spatial_softmax_pool w.r.t. (logits, feats); attn is recomputed from logits."""
    dt = _compute_dtype(logits)
    attn = torch.softmax(logits.to(dt), dim=-1)
    g_pooled = grad_pooled.to(dt)
    d_attn = grad_attn.to(dt) + torch.matmul(g_pooled, feats.to(dt).transpose(-1, -2))
    grad_logits = attn * (d_attn - (attn * d_attn).sum(dim=-1, keepdim=True))
    grad_feats = torch.matmul(attn.transpose(-1, -2), g_pooled)
    return grad_logits.to(logits.dtype), grad_feats.to(feats.dtype)


def _sqrt_zero_grad(s: Tensor) -> Tensor:
    """sqrt(s) for s > 0 and 0 elsewhere, with gradient 0 where s <= 0.

    d sqrt(s)/ds is infinite at s = 0 (an underflowed softmax gives exact zeros, often in
    bf16).  There the Hellinger penalty can only grow as s grows, and s cannot go below 0, so
    s = 0 is a constrained minimum in that coordinate: its (projected) gradient is 0.  Through
    the softmax that produced s, any finite value gives the same logit gradient (ds/de = 0).
    """
    positive = s > 0
    return torch.where(positive, s, torch.ones_like(s)).sqrt() * positive


def diversity_penalty(attn: Tensor, kind: str = "hellinger") -> Tensor:
    """Per-frame diversity penalty (M,) of attention rows attn (M, K, L).

    hellinger (Eq. 9): Q = ||R R^T - I||_F^2 with R = sqrt(S);
    l2 (Eq. 10):       Q' = ||S S^T - I||_F^2.
    16-bit inputs return float32.
    """
    s = attn.to(_compute_dtype(attn))
    r = _sqrt_zero_grad(s) if kind == "hellinger" else s
    gram = torch.matmul(r, r.transpose(-1, -2))
    eye = torch.eye(attn.shape[-2], dtype=gram.dtype, device=gram.device)
    return (gram - eye).square().sum(dim=(-1, -2))


def diversity_penalty_backward(grad: Tensor, attn: Tensor, kind: str = "hellinger") -> Tensor:
    """Gradient w.r.t. attn of diversity_penalty, for the upstream gradient grad (M,).

    With E = G - I: l2 gives 4 E S; hellinger gives 4 E R * dR/dS = 2 (E R) / R where S > 0
    and 0 where S <= 0 (as _sqrt_zero_grad defines).
    """
    s = attn.to(_compute_dtype(attn))
    r = _sqrt_zero_grad(s) if kind == "hellinger" else s
    e = torch.matmul(r, r.transpose(-1, -2)) - torch.eye(attn.shape[-2], dtype=s.dtype, device=s.device)
    er = torch.matmul(e, r) * grad.to(s.dtype)[:, None, None]
    if kind == "hellinger":
        positive = s > 0
        g = torch.where(positive, 2 * er / torch.where(positive, r, torch.ones_like(r)), torch.zeros_like(r))
    else:
        g = 4 * er
    return g.to(attn.dtype)


def frame_attention(x: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Supplementary Eqs. 1-3, rows as the text says.

    x (B, N, K, D), bias (N, N).  Per clip b and head k, with X = x[b, :, k] (N, D):
    C = row-softmax(scale * X X^T + bias) and out[b, i, k] = sum_j C[i, j] X[j].
    """
    dt = _compute_dtype(x)
    xk = x.to(dt).permute(0, 2, 1, 3)  # (B, K, N, D)
    scores = scale * torch.matmul(xk, xk.transpose(-1, -2)) + bias.to(dt)
    mixed = torch.matmul(torch.softmax(scores, dim=-1), xk)
    return mixed.permute(0, 2, 1, 3).to(x.dtype).contiguous()


def frame_attention_backward(grad: Tensor, x: Tensor, bias: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Gradients of frame_attention w.r.t. (x, bias); C is recomputed.

    With A = scale X X^T + bias, C = softmax(A), out = C X:
    dC = dOut X^T, dA = C * (dC - rowsum(C * dC)), dX = C^T dOut + scale (dA + dA^T) X,
    dbias = sum of dA over clips and heads.
    """
    dt = _compute_dtype(x)
    xk = x.to(dt).permute(0, 2, 1, 3)  # (B, K, N, D)
    g = grad.to(dt).permute(0, 2, 1, 3)
    c = torch.softmax(scale * torch.matmul(xk, xk.transpose(-1, -2)) + bias.to(dt), dim=-1)
    dc = torch.matmul(g, xk.transpose(-1, -2))
    da = c * (dc - (c * dc).sum(dim=-1, keepdim=True))
    dx = torch.matmul(c.transpose(-1, -2), g) + scale * torch.matmul(da + da.transpose(-1, -2), xk)
    return dx.permute(0, 2, 1, 3).to(x.dtype).contiguous(), da.sum(dim=(0, 1)).to(bias.dtype)
