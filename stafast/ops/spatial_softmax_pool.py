"""spatial_softmax_pool: Eq. 2 (softmax over the L grid cells) fused with Eq. 3 (attention pooling).

    pooled, attn = spatial_softmax_pool(logits, feats)
    logits (M, K, L), feats (M, L, D) -> pooled (M, K, D), attn (M, K, L)

Differentiable in both inputs, through both outputs (attn feeds the diversity penalty).
The backward recomputes attn from logits (K*L values per frame) instead of saving it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks, _spec, reference

NAME = "spatial_softmax_pool"


def _triton():
    from stafast.kernels import spatial_softmax_pool as kernels
    return kernels.forward, kernels.backward


def _ext():
    return torch.ops.stafast_ext.spatial_softmax_pool, torch.ops.stafast_ext.spatial_softmax_pool_backward


def _fake(logits, feats):
    m, k, _ = logits.shape
    return feats.new_empty(m, k, feats.shape[-1]), torch.empty_like(logits)


def _backward_fake(grad_pooled, grad_attn, logits, feats):
    # grad_feats is contiguous whatever the strides of feats (every backend writes a new tensor)
    return torch.empty_like(logits), feats.new_empty(feats.shape)


def _inputs(shape, dtype, device):
    m, k, l, d = shape
    return 2 * torch.randn(m, k, l, dtype=dtype, device=device), torch.randn(m, l, d, dtype=dtype, device=device)


OP = _spec.register(_spec.OpSpec(
    name=NAME, forward=reference.spatial_softmax_pool, backward=reference.spatial_softmax_pool_backward,
    triton=_triton, ext=_ext, fake=_fake, backward_fake=_backward_fake, inputs=_inputs,
    # (M, K, L, D), odd on purpose: K = 1, L not a power of two, D not a multiple of 16. The CPU
    # tiles (6 heads x 2-3 rows, 6 heads x 2-4 vectors of channels) get full tiles followed by smaller
    # last tiles of every size: K = 7 and 9, L = 5 to 50, D = 115 (64 + 48 + 3 channels in fp32). The
    # last two take several Triton tiles: L > 256 several L tiles, K > 16, 32 and 64 K tiles and
    # backward head groups.
    test_shapes=((1, 1, 1, 1), (3, 1, 7, 5), (4, 6, 32, 33), (2, 3, 13, 70), (5, 2, 50, 17), (2, 9, 6, 40),
                 (2, 7, 5, 115), (2, 20, 300, 37), (1, 70, 9, 21))))


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
    # feats goes as it is: the Triton kernels read it through its strides (the (M, D, L) -> (M, L, D)
    # view of a channels-first feature map needs no copy); the other backends copy if they must.
    return OP(logits.contiguous(), feats)
