"""spatial_softmax_pool: Eq. 2 (softmax over the L grid cells) fused with Eq. 3 (attention pooling).

    pooled, attn = spatial_softmax_pool(logits, feats)
    logits (M, K, L), feats (M, L, D) -> pooled (M, K, D), attn (M, K, L)

Differentiable in both inputs, through both outputs (attn feeds the diversity penalty).
The backward recomputes attn from logits (K*L values per frame) instead of saving it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _backend, _checks, reference

NAME = "spatial_softmax_pool"
IMPLS = _backend.implementations(NAME, reference.spatial_softmax_pool, reference.spatial_softmax_pool_backward)


@torch.library.custom_op("stafast::spatial_softmax_pool", mutates_args=())
def _op(logits: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    return _backend.dispatch(IMPLS, 0, logits.device, logits, feats)


@_op.register_fake
def _(logits, feats):
    m, k, _ = logits.shape
    return feats.new_empty(m, k, feats.shape[-1]), torch.empty_like(logits)


@torch.library.custom_op("stafast::spatial_softmax_pool_backward", mutates_args=())
def _backward_op(grad_pooled: Tensor, grad_attn: Tensor, logits: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    return _backend.dispatch(IMPLS, 1, logits.device, grad_pooled, grad_attn, logits, feats)


@_backward_op.register_fake
def _(grad_pooled, grad_attn, logits, feats):
    # grad_feats is contiguous whatever the strides of feats (every backend writes a new tensor)
    return torch.empty_like(logits), feats.new_empty(feats.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _autograd(ctx, grad_pooled, grad_attn):
    logits, feats = ctx.saved_tensors
    return _backward_op(grad_pooled.contiguous(), grad_attn.contiguous(), logits, feats)


_op.register_autograd(_autograd, setup_context=_setup_context)


def spatial_softmax_pool(logits: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    """Spatial attention of Eq. 2 and gated features of Eq. 3.

    logits (M, K, L): Eq. 1 responses of K heads over L cells; feats (M, L, D), same dtype
    and device.  Returns pooled (M, K, D) with pooled[m, k] = sum_l attn[m, k, l] feats[m, l]
    and attn (M, K, L) = softmax of logits over L.
    """
    _checks.tensor(NAME, "logits", logits, 3, "(M, K, L)")
    _checks.tensor(NAME, "feats", feats, 3, "(M, L, D)")
    _checks.same(NAME, ("logits", "feats"), logits, feats)
    m, k, l = logits.shape
    _checks.dim(NAME, "feats", feats, 0, m, "its M (frames) as in logits", f"({m}, {l}, D)")
    _checks.dim(NAME, "feats", feats, 1, l, "its L (grid cells) as in logits", f"({m}, {l}, D)")
    if _backend.inline_reference():
        return reference.spatial_softmax_pool(logits, feats)
    # feats goes as it is: the Triton kernels read it through its strides (the (M, D, L) -> (M, L, D)
    # view of a channels-first feature map needs no copy); the other backends copy if they must.
    return _op(logits.contiguous(), feats)
