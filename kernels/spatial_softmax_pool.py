"""Triton kernels for spatial_softmax_pool (Eqs. 2-3): softmax over L fused with attention pooling.

forward:  grid (M, D tiles). Each program recomputes the K x L softmax of its frame in registers
          (K*L values, cheaper than a round trip) and pools one D tile of feats: feats is read once.
backward: grid (M, D tiles) writes d_feats = attn^T g_pooled for its tile and its partial
          d_attn = g_pooled feats^T summed over the tile; a second kernel, one program per frame,
          adds the partials and g_attn and applies the softmax backward. Only attn-sized
          partials are materialised.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import autotune, block, configs, device_guard, is_fp64, upcast

FORWARD_CONFIGS = configs(block_d=[64, 32, 128, 256], warps=[4, 2, 8])
# One BLOCK_D for the backward: the launcher sizes the partial-sum buffer by it.
BACKWARD_BLOCK_D = 64
BACKWARD_CONFIGS = configs(block_d=[BACKWARD_BLOCK_D], warps=[4, 2, 8])


@triton.jit
def _softmax_rows(logits_ptr, m, K, L, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, FP64: tl.constexpr):
    """attn (BLOCK_K, BLOCK_L) of frame m: softmax over the L valid columns, zeros elsewhere."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_l = tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    mask = (offs_k[:, None] < K) & mask_l[None, :]
    e = upcast(tl.load(logits_ptr + m * K * L + offs_k[:, None] * L + offs_l[None, :], mask=mask, other=0.0), FP64)
    e = tl.where(mask_l[None, :], e, float("-inf"))
    p = tl.exp(e - tl.max(e, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@autotune(FORWARD_CONFIGS, key=["K", "L", "D"])
@triton.jit
def _forward_kernel(logits_ptr, feats_ptr, pooled_ptr, attn_ptr, K, L, D,
                    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, FP64: tl.constexpr):
    m = tl.program_id(0)
    tile = tl.program_id(1)
    offs_k = tl.arange(0, BLOCK_K)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tile * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_kl = (offs_k[:, None] < K) & (offs_l[None, :] < L)
    attn = _softmax_rows(logits_ptr, m, K, L, BLOCK_K, BLOCK_L, FP64)
    if tile == 0:
        tl.store(attn_ptr + m * K * L + offs_k[:, None] * L + offs_l[None, :],
                 attn.to(attn_ptr.dtype.element_ty), mask=mask_kl)
    f = upcast(tl.load(feats_ptr + m * L * D + offs_l[:, None] * D + offs_d[None, :],
                       mask=(offs_l[:, None] < L) & (offs_d[None, :] < D), other=0.0), FP64)
    for k in range(K):  # one pooled row per head keeps only an L x BLOCK_D tile live
        a_k = tl.sum(tl.where(offs_k[:, None] == k, attn, 0.0), axis=0)          # (BLOCK_L,)
        row = tl.sum(a_k[:, None] * f, axis=0)                                    # (BLOCK_D,)
        tl.store(pooled_ptr + m * K * D + k * D + offs_d, row.to(pooled_ptr.dtype.element_ty), mask=offs_d < D)


@autotune(BACKWARD_CONFIGS, key=["K", "L", "D"])
@triton.jit
def _backward_tile_kernel(grad_pooled_ptr, logits_ptr, feats_ptr, grad_feats_ptr, partial_ptr, K, L, D, TILES,
                          BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, FP64: tl.constexpr):
    m = tl.program_id(0)
    tile = tl.program_id(1)
    offs_k = tl.arange(0, BLOCK_K)
    offs_l = tl.arange(0, BLOCK_L)
    offs_d = tile * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_ld = (offs_l[:, None] < L) & (offs_d[None, :] < D)
    attn = _softmax_rows(logits_ptr, m, K, L, BLOCK_K, BLOCK_L, FP64)
    f = upcast(tl.load(feats_ptr + m * L * D + offs_l[:, None] * D + offs_d[None, :], mask=mask_ld, other=0.0), FP64)
    gp = upcast(tl.load(grad_pooled_ptr + m * K * D + offs_k[:, None] * D + offs_d[None, :],
                        mask=(offs_k[:, None] < K) & (offs_d[None, :] < D), other=0.0), FP64)
    grad_f = tl.zeros((BLOCK_L, BLOCK_D), dtype=f.dtype)
    d_attn = tl.zeros((BLOCK_K, BLOCK_L), dtype=f.dtype)
    for k in range(K):
        a_k = tl.sum(tl.where(offs_k[:, None] == k, attn, 0.0), axis=0)          # (BLOCK_L,)
        g_k = tl.sum(tl.where(offs_k[:, None] == k, gp, 0.0), axis=0)            # (BLOCK_D,)
        grad_f += a_k[:, None] * g_k[None, :]                                     # attn^T g_pooled
        d_k = tl.sum(f * g_k[None, :], axis=1)                                    # g_pooled feats^T, row k
        d_attn += tl.where(offs_k[:, None] == k, d_k[None, :], 0.0)
    tl.store(grad_feats_ptr + m * L * D + offs_l[:, None] * D + offs_d[None, :],
             grad_f.to(grad_feats_ptr.dtype.element_ty), mask=mask_ld)
    tl.store(partial_ptr + ((m * TILES + tile) * BLOCK_K + offs_k[:, None]) * BLOCK_L + offs_l[None, :], d_attn)


@triton.jit
def _backward_softmax_kernel(grad_attn_ptr, logits_ptr, partial_ptr, grad_logits_ptr, K, L, TILES,
                             BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, FP64: tl.constexpr):
    m = tl.program_id(0)
    offs_k = tl.arange(0, BLOCK_K)
    offs_l = tl.arange(0, BLOCK_L)
    mask = (offs_k[:, None] < K) & (offs_l[None, :] < L)
    attn = _softmax_rows(logits_ptr, m, K, L, BLOCK_K, BLOCK_L, FP64)
    d_attn = upcast(tl.load(grad_attn_ptr + m * K * L + offs_k[:, None] * L + offs_l[None, :], mask=mask, other=0.0), FP64)
    for t in range(TILES):
        d_attn += tl.load(partial_ptr + ((m * TILES + t) * BLOCK_K + offs_k[:, None]) * BLOCK_L + offs_l[None, :])
    grad = attn * (d_attn - tl.sum(attn * d_attn, axis=1)[:, None])
    tl.store(grad_logits_ptr + m * K * L + offs_k[:, None] * L + offs_l[None, :],
             grad.to(grad_logits_ptr.dtype.element_ty), mask=mask)


def forward(logits: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits, feats = logits.contiguous(), feats.contiguous()
    m, k, l = logits.shape
    d = feats.shape[-1]
    pooled = feats.new_empty(m, k, d)
    attn = torch.empty_like(logits)
    grid = lambda meta: (m, triton.cdiv(d, meta["BLOCK_D"]))  # noqa: E731
    with device_guard(logits):
        _forward_kernel[grid](logits, feats, pooled, attn, k, l, d,
                              BLOCK_K=block(k), BLOCK_L=block(l), FP64=is_fp64(feats))
    return pooled, attn


def backward(grad_pooled: torch.Tensor, grad_attn: torch.Tensor, logits: torch.Tensor,
             feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grad_pooled, grad_attn = grad_pooled.contiguous(), grad_attn.contiguous()
    logits, feats = logits.contiguous(), feats.contiguous()
    m, k, l = logits.shape
    d = feats.shape[-1]
    bk, bl, fp64 = block(k), block(l), is_fp64(feats)
    tiles = triton.cdiv(d, BACKWARD_BLOCK_D)
    partial = torch.empty(m, tiles, bk, bl, device=feats.device, dtype=torch.float64 if fp64 else torch.float32)
    grad_feats = torch.empty_like(feats)
    grad_logits = torch.empty_like(logits)
    with device_guard(logits):
        _backward_tile_kernel[(m, tiles)](grad_pooled, logits, feats, grad_feats, partial, k, l, d, tiles,
                                          BLOCK_K=bk, BLOCK_L=bl, FP64=fp64)
        _backward_softmax_kernel[(m,)](grad_attn, logits, partial, grad_logits, k, l, tiles,
                                       BLOCK_K=bk, BLOCK_L=bl, FP64=fp64)
    return grad_logits, grad_feats
