"""diversity_penalty: the Hellinger diversity regulariser Q (Eq. 9) or its L2 variant Q' (Eq. 10).

    q = diversity_penalty(attn, kind="hellinger"|"l2", reduction="mean"|"sum"|"none")
    attn (M, K, L), rows are distributions over L -> per frame ||R R^T - I||_F^2, reduced over M

Hellinger uses R = sqrt(attn); where attn has exact zeros the gradient is 0, not infinite (see
reference._sqrt_zero_grad for why).  16-bit inputs give a float32 penalty.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _spec, reference

NAME = "diversity_penalty"
KINDS = ("hellinger", "l2")
REDUCTIONS = ("mean", "sum", "none")


def _out_dtype(attn: Tensor) -> torch.dtype:
    return torch.float32 if attn.dtype in (torch.float16, torch.bfloat16) else attn.dtype


def _triton():
    from stafast.kernels import diversity_penalty as kernels
    return kernels.forward, kernels.backward


def _ext():
    return torch.ops.stafast_ext.diversity_penalty, torch.ops.stafast_ext.diversity_penalty_backward


def _fake(attn, kind):
    return attn.new_empty(attn.shape[0], dtype=_out_dtype(attn))


def _backward_fake(grad, attn, kind):
    return torch.empty_like(attn)


def _inputs(shape, dtype, device):
    """Rows that are distributions over L."""
    return torch.softmax(3 * torch.randn(shape, dtype=torch.float64), dim=-1).to(dtype=dtype, device=device), KINDS[0]


OP = _spec.register(_spec.OpSpec(
    name=NAME, forward=reference.diversity_penalty, backward=reference.diversity_penalty_backward,
    triton=_triton, ext=_ext, fake=_fake, backward_fake=_backward_fake, inputs=_inputs,
    # (M, K, L): M = 37 and 19 are several 8- or 16-frame lane blocks and a partial one; the last two
    # take several Triton K tiles (K > 16, 32 and 64) and L tiles.
    test_shapes=((1, 1, 1), (3, 1, 7), (5, 6, 32), (2, 4, 13), (1, 8, 50), (37, 6, 32), (19, 9, 5),
                 (2, 20, 300), (1, 70, 33))))


def diversity_penalty(attn: Tensor, kind: str = "hellinger", reduction: str = "mean") -> Tensor:
    """Diversity penalty of the K receptive fields of each frame.

    attn (M, K, L) whose rows are distributions over L (the `attn` of spatial_softmax_pool).
    kind "hellinger" (Eq. 9, the paper's Q) or "l2" (Eq. 10, Q'); reduction over the M frames
    "mean" (the paper's choice, scalar), "sum" (scalar) or "none" (M,).
    """
    _checks.tensor(NAME, "attn", attn, 3, "(M, K, L)")
    _checks.choice(NAME, "kind", kind, KINDS)
    _checks.choice(NAME, "reduction", reduction, REDUCTIONS)
    q = OP(attn.contiguous(), kind)
    if reduction == "mean":
        return q.mean()
    if reduction == "sum":
        return q.sum()
    return q
