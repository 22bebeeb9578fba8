"""Triton kernels for diversity_penalty (Eq. 9: Hellinger Q with R = sqrt(S); Eq. 10: Q' with R = S).

Per frame: G = R R^T (K x K), E = G - I, forward Q = ||E||_F^2, backward dS = g * 2 (E R) / R
(Hellinger; 0 where S = 0, as the reference defines) or g * 4 E S (l2).

forward   grid (frame groups, K tiles). G is accumulated over L tiles with tl.dot (heads padded to
          16). A program does FRAMES frames in turn when there are many more frames than SMs.
          With several K tiles each program sums ||E_ij||^2 over the column tiles j of its row
          tile i, and the launcher adds the tiles' partial sums.
backward  same grid. One K tile: E in registers after one pass over L, a second pass writes
          dS = f(E R). Several K tiles: E_ij one column tile j at a time, E_ij R_j added into an
          fp32 workspace that a last pass over L turns into dS.
16-bit inputs: R = sqrt(S) is rounded to the input dtype for the tensor cores (the same relative
rounding as S itself carries), G and E R accumulate in fp32. fp32/fp64 inputs: FMA dots, whose
operands are copied into the registers of every thread that needs them, so their tiles are smaller
(BLOCK_K_MAX, BLOCK_L).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, device_guard, is_fp64, launch, mma, num_sms, options, tile, upcast

BLOCK_K_MAX = {2: 64, 4: 32, 8: 32}  # heads per tile, by element size; more heads -> K tiles
CELLS = {2: 2048, 4: 512, 8: 512}     # BLOCK_K x BLOCK_L at most


@triton.jit
def _r_tile(attn_ptr, base, offs_k, offs_l, K, L, HELLINGER: tl.constexpr, FP64: tl.constexpr):
    """(S, R) tiles of one frame, zero outside K x L. The load reads clamped addresses instead of
    masking (a predicate per element, which ptxas spilled at odd sizes)."""
    s = tl.load(attn_ptr + base + tl.minimum(offs_k, K - 1)[:, None] * L + tl.minimum(offs_l, L - 1)[None, :])
    s = tl.where((offs_k[:, None] < K) & (offs_l[None, :] < L), upcast(s, FP64), 0.0)
    if HELLINGER:
        r = tl.sqrt(tl.where(s > 0, s, 0.0))
    else:
        r = s
    return s, r


@triton.jit
def _gram_minus_eye(attn_ptr, base, offs_i, offs_j, K, L, HELLINGER: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_L: tl.constexpr, SAME: tl.constexpr, FP64: tl.constexpr):
    """E_ij = R_i R_j^T - I_ij over L tiles; zero outside K x K."""
    g = tl.zeros((BLOCK_K, BLOCK_K), tl.float64 if FP64 else tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        _, r_i = _r_tile(attn_ptr, base, offs_i, offs_l, K, L, HELLINGER, FP64)
        r_i = r_i.to(attn_ptr.dtype.element_ty)  # tensor cores for 16-bit inputs (no-op otherwise)
        if SAME:
            r_j = r_i
        else:
            _, r_j = _r_tile(attn_ptr, base, offs_j, offs_l, K, L, HELLINGER, FP64)
            r_j = r_j.to(attn_ptr.dtype.element_ty)
        g = mma(r_i, tl.trans(r_j), g, FP64)
    eye = (offs_i[:, None] == offs_j[None, :]) & (offs_i[:, None] < K)
    return g - tl.where(eye, 1.0, 0.0)


@triton.jit
def _forward_kernel(attn_ptr, q_ptr, M, K, L, FRAMES, HELLINGER: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_L: tl.constexpr, K_TILES: tl.constexpr, FP64: tl.constexpr):
    tile_i = tl.program_id(1)
    offs_i = tile_i * BLOCK_K + tl.arange(0, BLOCK_K)
    for f in range(FRAMES):
        m = tl.program_id(0).to(tl.int64) * FRAMES + f
        if m < M:
            base = m * K * L
            squares = tl.zeros((BLOCK_K, BLOCK_K), tl.float64 if FP64 else tl.float32)
            for tile_j in range(K_TILES):
                offs_j = tile_j * BLOCK_K + tl.arange(0, BLOCK_K)
                e = _gram_minus_eye(attn_ptr, base, offs_i, offs_j, K, L, HELLINGER, BLOCK_K, BLOCK_L, K_TILES == 1,
                                    FP64)
                squares += e * e
            tl.store(q_ptr + m * K_TILES + tile_i, tl.sum(tl.sum(squares, axis=1), axis=0))


@triton.jit
def _grad_tile(s, r, er, g, HELLINGER: tl.constexpr):
    """dQ/dS from E R: 2 (E R) / R where S > 0 and 0 elsewhere (Hellinger), 4 E S (l2)."""
    if HELLINGER:
        positive = s > 0
        d = tl.where(positive, 2.0 * er / tl.where(positive, r, 1.0), 0.0)
    else:
        d = 4.0 * er
    return d * g


@triton.jit
def _backward_kernel(grad_ptr, attn_ptr, grad_attn_ptr, work_ptr, M, K, L, FRAMES, HELLINGER: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, K_TILES: tl.constexpr, FP64: tl.constexpr):
    tile_i = tl.program_id(1)
    offs_i = tile_i * BLOCK_K + tl.arange(0, BLOCK_K)
    for f in range(FRAMES):
        m = tl.program_id(0).to(tl.int64) * FRAMES + f
        if m < M:
            base = m * K * L
            g = upcast(tl.load(grad_ptr + m), FP64)
            if K_TILES == 1:
                e = _gram_minus_eye(attn_ptr, base, offs_i, offs_i, K, L, HELLINGER, BLOCK_K, BLOCK_L, True, FP64)
                for l0 in range(0, L, BLOCK_L):
                    offs_l = l0 + tl.arange(0, BLOCK_L)
                    s, r = _r_tile(attn_ptr, base, offs_i, offs_l, K, L, HELLINGER, FP64)
                    er = mma(e.to(attn_ptr.dtype.element_ty), r.to(attn_ptr.dtype.element_ty),
                             tl.zeros((BLOCK_K, BLOCK_L), tl.float64 if FP64 else tl.float32), FP64)
                    tl.store(grad_attn_ptr + base + offs_i[:, None] * L + offs_l[None, :],
                             _grad_tile(s, r, er, g, HELLINGER).to(grad_attn_ptr.dtype.element_ty),
                             mask=(offs_i[:, None] < K) & (offs_l[None, :] < L))
            else:
                for tile_j in range(K_TILES):  # E R = sum_j E_ij R_j, one column tile at a time
                    offs_j = tile_j * BLOCK_K + tl.arange(0, BLOCK_K)
                    e = _gram_minus_eye(attn_ptr, base, offs_i, offs_j, K, L, HELLINGER, BLOCK_K, BLOCK_L, False,
                                        FP64)
                    for l0 in range(0, L, BLOCK_L):
                        offs_l = l0 + tl.arange(0, BLOCK_L)
                        mask = (offs_i[:, None] < K) & (offs_l[None, :] < L)
                        _, r_j = _r_tile(attn_ptr, base, offs_j, offs_l, K, L, HELLINGER, FP64)
                        work = work_ptr + base + offs_i[:, None] * L + offs_l[None, :]
                        er = tl.zeros((BLOCK_K, BLOCK_L), tl.float64 if FP64 else tl.float32)
                        if tile_j > 0:
                            er = tl.load(work, mask=mask, other=0.0)
                        tl.store(work, mma(e.to(attn_ptr.dtype.element_ty), r_j.to(attn_ptr.dtype.element_ty), er,
                                           FP64), mask=mask)
                for l0 in range(0, L, BLOCK_L):
                    offs_l = l0 + tl.arange(0, BLOCK_L)
                    mask = (offs_i[:, None] < K) & (offs_l[None, :] < L)
                    s, r = _r_tile(attn_ptr, base, offs_i, offs_l, K, L, HELLINGER, FP64)
                    er = tl.load(work_ptr + base + offs_i[:, None] * L + offs_l[None, :], mask=mask, other=0.0)
                    tl.store(grad_attn_ptr + base + offs_i[:, None] * L + offs_l[None, :],
                             _grad_tile(s, r, er, g, HELLINGER).to(grad_attn_ptr.dtype.element_ty), mask=mask)


def _plan(attn: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(BLOCK_K, BLOCK_L, K tiles, frames per program, warps)."""
    m, k, l = attn.shape
    size = attn.dtype.itemsize
    bk = tile(k, hi=BLOCK_K_MAX[size])
    bl = tile(l, hi=max(16, min(64, CELLS[size] // bk)))
    k_tiles = triton.cdiv(k, bk)
    # Several frames per program only when programs would far outnumber what the GPU holds at once.
    frames = max(1, min(8, m * k_tiles // (8 * num_sms(attn))))
    # ptxas (sm_90): at 4 warps the 64-head tiles (32 in fp32) take 126-255 registers, at 8 warps 58-128.
    return bk, bl, k_tiles, frames, 8 if bk >= (64 if size <= 2 else 32) else 4


def forward(attn: torch.Tensor, kind: str) -> torch.Tensor:
    attn = attn.contiguous()
    m, k, l = attn.shape
    bk, bl, k_tiles, frames, warps = _plan(attn)
    q = torch.empty(m, k_tiles, dtype=acc_dtype(attn.dtype), device=attn.device)
    with device_guard(attn):
        launch(_forward_kernel, (triton.cdiv(m, frames), k_tiles), attn, q, m, k, l, frames,
               HELLINGER=kind == "hellinger", BLOCK_K=bk, BLOCK_L=bl, K_TILES=k_tiles, FP64=is_fp64(attn),
               **options(warps))
    return q[:, 0] if k_tiles == 1 else q.sum(dim=1)


def backward(grad: torch.Tensor, attn: torch.Tensor, kind: str) -> torch.Tensor:
    grad, attn = grad.contiguous(), attn.contiguous()
    m, k, l = attn.shape
    bk, bl, k_tiles, frames, warps = _plan(attn)
    grad_attn = torch.empty_like(attn)
    work = attn.new_empty((0,) if k_tiles == 1 else (m, k, l), dtype=acc_dtype(attn.dtype))
    with device_guard(attn):
        launch(_backward_kernel, (triton.cdiv(m, frames), k_tiles), grad, attn, grad_attn, work, m, k, l, frames,
               HELLINGER=kind == "hellinger", BLOCK_K=bk, BLOCK_L=bl, K_TILES=k_tiles, FP64=is_fp64(attn),
               **options(warps))
    return grad_attn


def examples(shape: dict, dtype: torch.dtype, make) -> list[tuple[str, object, tuple]]:
    """(stage, launcher, arguments) at a model shape, for both kinds (see stafast.kernels.OPS)."""
    m, k, l = shape["B"] * shape["N"], shape["K"], shape["L"]
    attn = torch.softmax(make(m, k, l, dtype=torch.float32), dim=-1).to(dtype)
    grad = make(m, dtype=acc_dtype(dtype))
    return [(f"{stage}[{kind}]", fn, args) for kind in ("hellinger", "l2")
            for stage, fn, args in (("forward", forward, (attn, kind)), ("backward", backward, (grad, attn, kind)))]
