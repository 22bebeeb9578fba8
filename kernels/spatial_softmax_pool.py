"""Triton kernels for spatial_softmax_pool (Eq. 2: softmax over the L grid cells; Eq. 3: pooling).

Shapes: logits (M, K, L), feats (M, L, D) -> pooled (M, K, D), attn (M, K, L). feats may be
strided (the (M, D, L) -> (M, L, D) view of a channels-first feature map is read in place).

forward   grid (M, D tiles, K tiles). A program takes the softmax statistics of its K tile over L
          tiles (online max and sum, in fp32), then walks L again: attn tile = exp(e - max) / sum,
          pooled += attn @ feats on tensor cores (tl.dot; K padded to 16). feats is read once; the
          K x L logits once per D tile (once in all when L fits one tile: the statistics' tile
          is reused).
backward  grid (M, D splits), split count chosen to fill the GPU (about 2 programs per SM).
          A program walks L tiles; for each it rebuilds the attn tile and, over its share of D,
          writes grad_feats = attn^T @ grad_pooled and accumulates d_attn = grad_pooled @ feats^T
          (K x L tile) in registers. The d_attn tiles of the splits go to an fp32 buffer that a
          second kernel sums in a fixed order (deterministic, no atomics) and turns into
          grad_logits = attn * (d_attn - sum_l attn d_attn). With one split and one L tile a
          single kernel does it all.
          Heads beyond BACKWARD_BLOCK_K_MAX are done in groups whose grad_feats add up in fp32
          (a rare case: the K x L tiles would not fit in registers).
Loads are not masked: rows beyond K or L and columns beyond D read clamped (valid) addresses, and
what they would add is zeroed where it matters. A masked load costs a predicate per element, and
ptxas spilled those (P2R + local stores) at odd sizes.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (RegisterModel, acc_dtype, config, device_guard, even_d, is_fp64, keep_configs, launch, mma,
                     num_sms, options, tile, upcast)

# Tile limits, for 16-bit inputs (tensor cores) and for fp32/fp64 (FMA dots, whose operands are
# copied into the registers of every thread that needs them: their reduction dimensions stay short).
FORWARD_BLOCK_K_MAX = 64                       # heads per forward program; more -> more programs (grid axis 2)
BACKWARD_BLOCK_K_MAX = {2: 128, 4: 32, 8: 32}  # by element size; more heads -> groups (see the module doc)
CELLS = {2: 4096, 4: 2048, 8: 2048}            # BLOCK_K x BLOCK_L at most in the forward (512 in the backward)
D_ALIGN = 128                                  # backward splits are multiples of this (any BLOCK_D divides it)


# Registers of the two autotuned kernels, for tiles (BLOCK_K x BLOCK_L, BLOCK_L x BLOCK_D,
# BLOCK_K x BLOCK_D), by (backward, 16-bit inputs); see RegisterModel. The fp32 backward's few
# measurements did not fit a model: it takes the 16-bit one with the dot tiles' terms doubled.
REGISTERS = {(False, True): RegisterModel(4, (7.4, 0.2, 1.3)), (False, False): RegisterModel(17, (7.6, 0.0, 2.2)),
             (True, True): RegisterModel(50, (4.5, 1.65, 1.05)), (True, False): RegisterModel(50, (4.5, 3.3, 2.1))}


def _pruner(backward: bool):
    def prune(configs, named, **meta):
        """Configs whose tiles fit in registers and shared memory (estimates checked by aot.py)."""
        esize, bk, bl = named["feats_ptr"].element_size(), meta["BLOCK_K"], meta["BLOCK_L"]
        return keep_configs(configs, named["D"], lambda c: _demand(c, esize, bk, bl, backward))
    return prune


def _demand(c, esize: int, bk: int, bl: int, backward: bool) -> tuple[float, float]:
    """(estimated registers per thread, shared bytes) of config c."""
    bd, w = c.kwargs["BLOCK_D"], c.num_warps
    if esize >= 4 and bd > (32 if backward else 64):
        return math.inf, math.inf  # fp32/fp64 FMA dots: 128-wide tiles spilled 340-850 B on sm_80
    if backward and bk * bd > 8 * 32 * w:
        return math.inf, math.inf  # grad_pooled as tl.dot's A operand (BLOCK_K x BLOCK_D): spilled above this
    if not backward and bl * bd > 64 * 32 * w:
        return math.inf, math.inf  # a feats tile of 64 x 256 at 4 warps spilled 1.4 KB with triton 3.6
    regs = REGISTERS[backward, esize <= 2]((bk * bl, bl * bd, bk * bd), w, fp64=esize == 8)
    shared = c.num_stages * (bl * bd + bk * bl) * esize
    return regs, shared


def _configs(block_d, warps):
    """Autotune configs; the first that survives pruning is also the one the interpreter runs."""
    return [config(w, BLOCK_D=bd) for bd in block_d for w in warps]


@triton.jit
def _logits_tile(logits_ptr, base, offs_k, offs_l, K, L, FP64: tl.constexpr):
    """(BLOCK_K, BLOCK_L) logits of contiguous (M, K, L) rows in the compute dtype: -inf beyond L
    (no weight); heads beyond K repeat head K - 1 (finite, never stored)."""
    e = tl.load(logits_ptr + base + tl.minimum(offs_k, K - 1)[:, None] * L + tl.minimum(offs_l, L - 1)[None, :])
    return tl.where(offs_l[None, :] < L, upcast(e, FP64), float("-inf"))


@triton.jit
def _feats_tile(feats, offs_l, offs_d, L, D, stride_fl, stride_fd, EVEN_D: tl.constexpr):
    """(BLOCK_L, BLOCK_D) of one frame's feats. Rows beyond L repeat row L - 1 (their attention is
    0); columns beyond D repeat column D - 1 (never stored; the backward zeroes what they add)."""
    if not EVEN_D:
        offs_d = tl.minimum(offs_d, D - 1)
    return tl.load(feats + tl.minimum(offs_l, L - 1)[:, None] * stride_fl + offs_d[None, :] * stride_fd)


@triton.jit
def _softmax_stats(logits_ptr, base, offs_k, K, L, BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr,
                   FP64: tl.constexpr):
    """Row max and 1 / sum exp(e - max) over L (Eq. 2's normaliser), online over L tiles. Also
    returns the first L tile of logits: with a single L tile the caller uses it instead of
    loading the logits again."""
    first = _logits_tile(logits_ptr, base, offs_k, tl.arange(0, BLOCK_L), K, L, FP64)
    row_max = tl.max(first, axis=1)  # finite: every tile has a valid column
    row_sum = tl.sum(tl.exp(first - row_max[:, None]), axis=1)
    for l0 in range(BLOCK_L, L, BLOCK_L):
        e = _logits_tile(logits_ptr, base, offs_k, l0 + tl.arange(0, BLOCK_L), K, L, FP64)
        new_max = tl.maximum(row_max, tl.max(e, axis=1))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(e - new_max[:, None]), axis=1)
        row_max = new_max
    return row_max, 1.0 / row_sum, first


@triton.jit
def _attn_tile(logits_ptr, base, offs_k, l0, K, L, row_max, inv_sum, first, BLOCK_L: tl.constexpr,
               ONE_L_TILE: tl.constexpr, FP64: tl.constexpr):
    """attn = softmax(logits) on the L tile starting at l0 (Eq. 2); 0 beyond L."""
    if ONE_L_TILE:
        e = first
    else:
        e = _logits_tile(logits_ptr, base, offs_k, l0 + tl.arange(0, BLOCK_L), K, L, FP64)
    return tl.exp(e - row_max[:, None]) * inv_sum[:, None]


@triton.autotune(_configs(block_d=[128, 64, 256], warps=[4, 8]), key=["K", "L", "D"],
                 prune_configs_by={"early_config_prune": _pruner(backward=False)})
@triton.heuristics({"EVEN_D": even_d})
@triton.jit
def _forward_kernel(logits_ptr, feats_ptr, pooled_ptr, attn_ptr, K, L, D, stride_fm, stride_fl, stride_fd,
                    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ONE_L_TILE: tl.constexpr,
                    EVEN_D: tl.constexpr, FP64: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)  # int64 offsets: M x L x D can pass 2^31
    pid_d = tl.program_id(1)
    offs_k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    logits_base = m * K * L
    row_max, inv_sum, first = _softmax_stats(logits_ptr, logits_base, offs_k, K, L, BLOCK_K, BLOCK_L, FP64)
    acc = tl.zeros((BLOCK_K, BLOCK_D), tl.float64 if FP64 else tl.float32)
    feats = feats_ptr + m * stride_fm
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        attn = _attn_tile(logits_ptr, logits_base, offs_k, l0, K, L, row_max, inv_sum, first, BLOCK_L, ONE_L_TILE,
                          FP64)
        if pid_d == 0:
            tl.store(attn_ptr + logits_base + offs_k[:, None] * L + offs_l[None, :],
                     attn.to(attn_ptr.dtype.element_ty), mask=(offs_k[:, None] < K) & (offs_l[None, :] < L))
        f = _feats_tile(feats, offs_l, offs_d, L, D, stride_fl, stride_fd, EVEN_D)
        acc = mma(attn.to(f.dtype), f, acc, FP64)  # Eq. 3 for BLOCK_K heads x BLOCK_D channels
    tl.store(pooled_ptr + m * K * D + offs_k[:, None] * D + offs_d[None, :],
             acc.to(pooled_ptr.dtype.element_ty), mask=(offs_k[:, None] < K) & (offs_d[None, :] < D))


# BLOCK_D 128 in the backward took 202-255 registers on sm_90 and spilled 32-48 B at odd D.
@triton.autotune(_configs(block_d=[64, 32, 16], warps=[4, 8]), key=["K", "L", "D"],
                 prune_configs_by={"early_config_prune": _pruner(backward=True)})
@triton.heuristics({"EVEN_D": even_d})
@triton.jit
def _backward_kernel(grad_pooled_ptr, grad_attn_ptr, logits_ptr, feats_ptr, grad_feats_ptr, partial_ptr,
                     grad_logits_ptr, K, L, D, CHUNK, stride_fm, stride_fl, stride_fd,
                     BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ONE_L_TILE: tl.constexpr,
                     FUSED: tl.constexpr, EVEN_D: tl.constexpr, FP64: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    offs_k = tl.arange(0, BLOCK_K)
    logits_base = m * K * L
    row_max, inv_sum, first = _softmax_stats(logits_ptr, logits_base, offs_k, K, L, BLOCK_K, BLOCK_L, FP64)
    feats = feats_ptr + m * stride_fm
    grad_feats = grad_feats_ptr + m * L * D
    grad_pooled = grad_pooled_ptr + m * K * D + tl.minimum(offs_k, K - 1)[:, None] * D
    d_start = split * CHUNK  # splits are whole BLOCK_D tiles: only the last tile of D is partial
    d_end = tl.minimum(d_start + CHUNK, D)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        attn = _attn_tile(logits_ptr, logits_base, offs_k, l0, K, L, row_max, inv_sum, first, BLOCK_L, ONE_L_TILE,
                          FP64)
        attn = tl.where(offs_k[:, None] < K, attn, 0.0)                             # no padded heads in grad_feats
        attn_t = tl.trans(attn.to(feats_ptr.dtype.element_ty))                     # (BLOCK_L, BLOCK_K)
        d_attn = tl.zeros((BLOCK_K, BLOCK_L), tl.float64 if FP64 else tl.float32)
        for d0 in range(d_start, d_end, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            f = _feats_tile(feats, offs_l, offs_d, L, D, stride_fl, stride_fd, EVEN_D)
            if EVEN_D:
                g = tl.load(grad_pooled + offs_d[None, :])
            else:  # columns beyond D repeat column D - 1: zero them, or they would add to d_attn
                g = tl.load(grad_pooled + tl.minimum(offs_d, D - 1)[None, :])
                g = tl.where(offs_d[None, :] < D, g, 0.0)
            grad_f = mma(attn_t, g, tl.zeros((BLOCK_L, BLOCK_D), tl.float64 if FP64 else tl.float32), FP64)
            tl.store(grad_feats + offs_l[:, None] * D + offs_d[None, :], grad_f.to(grad_feats_ptr.dtype.element_ty),
                     mask=(offs_l[:, None] < L) & (offs_d[None, :] < D))
            d_attn = mma(g, tl.trans(f), d_attn, FP64)                              # grad_pooled feats^T
        mask_kl = (offs_k[:, None] < K) & (offs_l[None, :] < L)
        if FUSED:  # one split, one L tile: d_attn is complete, finish the softmax backward here
            d_attn += upcast(tl.load(grad_attn_ptr + logits_base + offs_k[:, None] * L + offs_l[None, :],
                                     mask=mask_kl, other=0.0), FP64)
            grad = attn * (d_attn - tl.sum(attn * d_attn, axis=1)[:, None])
            tl.store(grad_logits_ptr + logits_base + offs_k[:, None] * L + offs_l[None, :],
                     grad.to(grad_logits_ptr.dtype.element_ty), mask=mask_kl)
        else:
            tl.store(partial_ptr + (m * tl.num_programs(1) + split) * K * L + offs_k[:, None] * L + offs_l[None, :],
                     d_attn, mask=mask_kl)


@triton.jit
def _softmax_backward_kernel(grad_attn_ptr, logits_ptr, partial_ptr, grad_logits_ptr, K, L, SPLITS,
                             BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, ONE_L_TILE: tl.constexpr,
                             FP64: tl.constexpr):
    """grad_logits = attn * (d_attn - sum_l attn d_attn), d_attn = grad_attn + the splits' partials."""
    m = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    base = m * K * L
    row_max, inv_sum, first = _softmax_stats(logits_ptr, base, offs_k, K, L, BLOCK_K, BLOCK_L, FP64)
    inner = tl.zeros((BLOCK_K,), tl.float64 if FP64 else tl.float32)
    for sweep in tl.static_range(2):  # 0: the row sums of attn * d_attn; 1: grad_logits
        for l0 in range(0, L, BLOCK_L):
            offs_l = l0 + tl.arange(0, BLOCK_L)
            mask = (offs_k[:, None] < K) & (offs_l[None, :] < L)
            offs = offs_k[:, None] * L + offs_l[None, :]
            attn = _attn_tile(logits_ptr, base, offs_k, l0, K, L, row_max, inv_sum, first, BLOCK_L, ONE_L_TILE, FP64)
            d_attn = upcast(tl.load(grad_attn_ptr + base + offs, mask=mask, other=0.0), FP64)
            for s in range(SPLITS):  # a fixed order: the same sums on every run
                d_attn += tl.load(partial_ptr + (m * SPLITS + s) * K * L + offs, mask=mask, other=0.0)
            if sweep == 0:
                inner += tl.sum(attn * d_attn, axis=1)
            else:
                tl.store(grad_logits_ptr + base + offs,
                         (attn * (d_attn - inner[:, None])).to(grad_logits_ptr.dtype.element_ty), mask=mask)


def _blocks(k: int, l: int, dtype: torch.dtype, backward: bool) -> tuple[int, int]:
    """(BLOCK_K, BLOCK_L): heads padded to 16 for tl.dot; L tiles of 16-64 cells, narrower as BLOCK_K
    grows so that the K x L tiles stay within CELLS."""
    size = dtype.itemsize
    bk = tile(k, hi=BACKWARD_BLOCK_K_MAX[size] if backward else FORWARD_BLOCK_K_MAX)
    cells = 512 if backward else CELLS[size]
    return bk, tile(l, hi=max(16, min(64, cells // bk)))


def forward(logits: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.contiguous()  # feats is read through its strides
    m, k, l = logits.shape
    d = feats.shape[-1]
    pooled = feats.new_empty(m, k, d)
    attn = torch.empty_like(logits)
    bk, bl = _blocks(k, l, feats.dtype, backward=False)
    grid = lambda meta: (m, triton.cdiv(d, meta["BLOCK_D"]), triton.cdiv(k, bk))  # noqa: E731
    with device_guard(logits):
        launch(_forward_kernel, grid, logits, feats, pooled, attn, k, l, d, *feats.stride(),
               BLOCK_K=bk, BLOCK_L=bl, ONE_L_TILE=l <= bl, FP64=is_fp64(feats))
    return pooled, attn


def splits_for(m: int, d: int, sms: int) -> int:
    """D splits of the backward: enough programs for about 2 per SM, each split a multiple of
    D_ALIGN channels."""
    return max(1, min(triton.cdiv(2 * sms, m), triton.cdiv(d, D_ALIGN)))


def backward(grad_pooled: torch.Tensor, grad_attn: torch.Tensor, logits: torch.Tensor,
             feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = logits.shape[1]
    group = BACKWARD_BLOCK_K_MAX[feats.dtype.itemsize]
    if k > group:  # head groups; their grad_feats add up in the accumulation dtype
        grad_logits, grad_feats = torch.empty_like(logits), None
        for k0 in range(0, k, group):
            heads = slice(k0, k0 + group)
            g_logits, g_feats = _backward(grad_pooled[:, heads], grad_attn[:, heads], logits[:, heads], feats,
                                          acc_dtype(feats.dtype))
            grad_logits[:, heads] = g_logits
            grad_feats = g_feats if grad_feats is None else grad_feats.add_(g_feats)
        return grad_logits, grad_feats.to(feats.dtype)
    return _backward(grad_pooled, grad_attn, logits, feats, feats.dtype)


def _backward(grad_pooled, grad_attn, logits, feats, grad_feats_dtype):
    grad_pooled, grad_attn, logits = grad_pooled.contiguous(), grad_attn.contiguous(), logits.contiguous()
    m, k, l = logits.shape
    d = feats.shape[-1]
    bk, bl = _blocks(k, l, feats.dtype, backward=True)
    splits = splits_for(m, d, num_sms(feats))
    chunk = triton.cdiv(triton.cdiv(d, splits), D_ALIGN) * D_ALIGN
    splits = triton.cdiv(d, chunk)
    fused = splits == 1 and l <= bl
    fp64 = is_fp64(feats)
    grad_feats = torch.empty(feats.shape, dtype=grad_feats_dtype, device=feats.device)
    grad_logits = torch.empty_like(logits)
    partial = logits.new_empty((0,) if fused else (m, splits, k, l), dtype=acc_dtype(logits.dtype))
    with device_guard(logits):
        launch(_backward_kernel, (m, splits), grad_pooled, grad_attn, logits, feats, grad_feats, partial,
               grad_logits, k, l, d, chunk, *feats.stride(), BLOCK_K=bk, BLOCK_L=bl, ONE_L_TILE=l <= bl, FUSED=fused,
               FP64=fp64)
        if not fused:
            bk2, bl2 = tile(k, lo=2, hi=16), tile(l, lo=2, hi=128)
            launch(_softmax_backward_kernel, (m, triton.cdiv(k, bk2)), grad_attn, logits, partial, grad_logits,
                   k, l, splits, BLOCK_K=bk2, BLOCK_L=bl2, ONE_L_TILE=l <= bl2, FP64=fp64, **options(4))
    return grad_logits, grad_feats


def examples(shape: dict, dtype: torch.dtype, make) -> list[tuple[str, object, tuple]]:
    """(stage, launcher, arguments) at a model shape (see stafast.kernels.OPS)."""
    m, k, l, d = shape["B"] * shape["N"], shape["K"], shape["L"], shape["D"]
    logits, feats = make(m, k, l, dtype=dtype), make(m, l, d, dtype=dtype)
    grads = make(m, k, d, dtype=dtype), make(m, k, l, dtype=dtype)
    return [("forward", forward, (logits, feats)), ("backward", backward, (*grads, logits, feats))]
