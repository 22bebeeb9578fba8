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

from . import _backend, _checks, reference

NAME = "frame_attention"
IMPLS = _backend.implementations(NAME, reference.frame_attention, reference.frame_attention_backward)


@torch.library.custom_op("stafast::frame_attention", mutates_args=())
def _op(x: Tensor, bias: Tensor, scale: float) -> Tensor:
    return _backend.dispatch(IMPLS, 0, x.device, x, bias, scale)


@_op.register_fake
def _(x, bias, scale):
    return torch.empty_like(x)


@torch.library.custom_op("stafast::frame_attention_backward", mutates_args=())
def _backward_op(grad: Tensor, x: Tensor, bias: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return _backend.dispatch(IMPLS, 1, x.device, grad, x, bias, scale)


@_backward_op.register_fake
def _(grad, x, bias, scale):
    return torch.empty_like(x), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    x, bias, scale = inputs
    ctx.save_for_backward(x, bias)
    ctx.scale = scale


def _autograd(ctx, grad):
    x, bias = ctx.saved_tensors
    grad_x, grad_bias = _backward_op(grad.contiguous(), x, bias, ctx.scale)
    return grad_x, grad_bias, None


_op.register_autograd(_autograd, setup_context=_setup_context)


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
    if _backend.inline_reference():
        return reference.frame_attention(x, bias, scale)
    return _op(x.contiguous(), bias.contiguous(), scale)
