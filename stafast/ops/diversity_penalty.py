"""diversity_penalty: the Hellinger diversity regulariser Q (Eq. 9) or its L2 variant Q' (Eq. 10).

    q = diversity_penalty(attn, kind="hellinger"|"l2", reduction="mean"|"sum"|"none")
    attn (M, K, L), rows are distributions over L -> per frame ||R R^T - I||_F^2, reduced over M

Hellinger uses R = sqrt(attn); where attn has exact zeros the gradient is 0, not infinite (see
reference._sqrt_zero_grad for why).  16-bit inputs give a float32 penalty.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _backend, _checks, reference

NAME = "diversity_penalty"
KINDS = ("hellinger", "l2")
REDUCTIONS = ("mean", "sum", "none")
IMPLS = _backend.implementations(NAME, reference.diversity_penalty, reference.diversity_penalty_backward)


def _out_dtype(attn: Tensor) -> torch.dtype:
    return torch.float32 if attn.dtype in (torch.float16, torch.bfloat16) else attn.dtype


@torch.library.custom_op("stafast::diversity_penalty", mutates_args=())
def _op(attn: Tensor, kind: str) -> Tensor:
    return _backend.dispatch(IMPLS, 0, attn.device, attn, kind)


@_op.register_fake
def _(attn, kind):
    return attn.new_empty(attn.shape[0], dtype=_out_dtype(attn))


@torch.library.custom_op("stafast::diversity_penalty_backward", mutates_args=())
def _backward_op(grad: Tensor, attn: Tensor, kind: str) -> Tensor:
    return _backend.dispatch(IMPLS, 1, attn.device, grad, attn, kind)


@_backward_op.register_fake
def _(grad, attn, kind):
    return torch.empty_like(attn)


def _setup_context(ctx, inputs, output):
    attn, kind = inputs
    ctx.save_for_backward(attn)
    ctx.kind = kind


def _autograd(ctx, grad):
    (attn,) = ctx.saved_tensors
    return _backward_op(grad.contiguous(), attn, ctx.kind), None


_op.register_autograd(_autograd, setup_context=_setup_context)


def diversity_penalty(attn: Tensor, kind: str = "hellinger", reduction: str = "mean") -> Tensor:
    """Diversity penalty of the K receptive fields of each frame.

    attn (M, K, L) whose rows are distributions over L (the `attn` of spatial_softmax_pool).
    kind "hellinger" (Eq. 9, the paper's Q) or "l2" (Eq. 10, Q'); reduction over the M frames
    "mean" (the paper's choice, scalar), "sum" (scalar) or "none" (M,).
    """
    _checks.tensor(NAME, "attn", attn, 3, "(M, K, L)")
    _checks.choice(NAME, "kind", kind, KINDS)
    _checks.choice(NAME, "reduction", reduction, REDUCTIONS)
    q = reference.diversity_penalty(attn, kind) if _backend.inline_reference() else _op(attn.contiguous(), kind)
    if reduction == "mean":
        return q.mean()
    if reduction == "sum":
        return q.sum()
    return q
