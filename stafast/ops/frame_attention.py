"""frame_attention: the N x N frame-enhancement attention (supplementary Eqs. 1-3).

    out = frame_attention(x, bias, scale)
    x (B, N, K, D), bias (N, N) -> out (B, N, K, D)

Per clip b and head k, with X = x[b, :, k] (N, D): C = row-softmax(scale * X X^T + bias) and
out[b, i, k] = sum_j C[i, j] X[j].  Row i of C holds the contributions of all frames to frame i,
as the supplementary's text says (its formula X_k C_k would mix columns instead).  The learned
FC and the residual of supplementary Eq. 4 stay in the module (stafast.models.sta).
Differentiable in x and bias; scale is a constant.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _spec, reference

NAME = "frame_attention"


def _triton():
    from stafast.kernels import frame_attention as kernels
    return kernels.forward, kernels.backward


def _ext():
    return torch.ops.stafast_ext.frame_attention, torch.ops.stafast_ext.frame_attention_backward


def _fake(x, bias, scale):
    return torch.empty_like(x)


def _backward_fake(grad, x, bias, scale):
    return torch.empty_like(x), torch.empty_like(bias)


def _inputs(shape, dtype, device):
    b, n, k, d = shape
    scale = 0.1 + 0.9 * torch.rand(()).item()
    return torch.randn(b, n, k, d, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device), scale


OP = _spec.register(_spec.OpSpec(
    name=NAME, forward=reference.frame_attention, backward=reference.frame_attention_backward,
    triton=_triton, ext=_ext, fake=_fake, backward_fake=_backward_fake, inputs=_inputs,
    # (B, N, K, D): N = 1 and K = 1, D not a multiple of 16; N > 16 takes several Triton N tiles,
    # N > 64 and > 128 the workspace path.
    test_shapes=((1, 1, 1, 1), (2, 1, 3, 5), (3, 6, 2, 33), (1, 4, 1, 70), (2, 7, 6, 19), (2, 20, 2, 37),
                 (1, 70, 1, 9), (1, 150, 1, 5))))


def frame_attention(x: Tensor, bias: Tensor, scale: float = 1.0) -> Tensor:
    """Mix each frame's gated feature with those of the other frames of its clip.

    x (B, N, K, D): K gated features of N frames of B clips; bias (N, N): the temporal
    similarity Psi of supplementary Eq. 2, same dtype and device; scale: finite float
    multiplying X X^T (1/sqrt(D) keeps 2048-d dot products from saturating the softmax).
    """
    _checks.tensor(NAME, "x", x, 4, "(B, N, K, D)")
    _checks.tensor(NAME, "bias", bias, 2, "(N, N)")
    _checks.same(NAME, ("x", "bias"), x, bias)
    n = x.shape[1]
    if tuple(bias.shape) != (n, n):
        raise ValueError(f"{NAME}: bias has shape {tuple(bias.shape)} but must be (N, N) = ({n}, {n}) "
                         f"for x of shape {tuple(x.shape)}")
    scale = _checks.finite(NAME, "scale", scale)
    return OP(x.contiguous(), bias.contiguous(), scale)
