"""Triton kernels for frame_attention (supplementary Eqs. 1-3, rows as the text says).

Per clip b and head k, X = x[b, :, k] (N x D): A = scale X X^T + bias, C = row-softmax(A),
out = C X. Backward: dC = dOut X^T, dA = C (dC - rowsum(C dC)), dX = C^T dOut + scale (dA + dA^T) X,
dbias = sum of dA over clips and heads (the launcher adds the per-program dA in a fixed order).
Frames are padded to 16 so that X X^T, C X and the rest run as tl.dot.

Small N (see register_path): one program per (clip, head). Forward: pass 1 accumulates X X^T
  over D tiles, C stays in registers, pass 2 writes C X tile by tile. Backward: pass 1
  accumulates X X^T and dOut X^T together, pass 2 writes dX.
Larger N: the N x N matrices go through an fp32 workspace (B*K, N, N): a kernel for scores of
  row-tile pairs, one for row softmaxes (and their backward), one for row tiles of W @ Y; the
  forward is three launches, the backward five.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from ._common import (RegisterModel, acc_dtype, config, device_guard, even_d, is_fp64, keep_configs, launch, mma,
                     options, tile, upcast)

# Frames whose N x N matrices stay in registers. The 16-bit forward holds one N x N matrix on
# tensor cores; the backward holds two, and fp32/fp64 tl.dot runs on FMAs with its operands copied
# into registers: compiled for sm_90, every config of those spilled at N = 128 (48 B to 271 KB
# per thread), none at N = 64.
N_REGISTER_MAX = 128
N_REGISTER_MAX_BACKWARD_OR_FP32 = 64
# Tiles of the workspace path's kernels, by element size (fp32/fp64 FMA dots need short reductions).
WORKSPACE = {2: dict(BLOCK_N=64, BLOCK_D=32, num_warps=8), 4: dict(BLOCK_N=32, BLOCK_D=16, num_warps=4),
             8: dict(BLOCK_N=32, BLOCK_D=16, num_warps=4)}


# Registers of the two autotuned kernels, for tiles (BLOCK_N x BLOCK_N, BLOCK_N x BLOCK_D), by
# (backward, 16-bit inputs); see RegisterModel.
REGISTERS = {(False, True): RegisterModel(31, (1.22, 0.92)), (False, False): RegisterModel(31, (2.27, 2.29)),
             (True, True): RegisterModel(55, (2.94, 1.07)), (True, False): RegisterModel(41, (3.41, 2.12))}


def _pruner(backward: bool):
    def prune(configs, named, **meta):
        """Configs whose tiles fit in registers and shared memory (estimates checked by aot.py)."""
        esize = named["x_ptr"].element_size()
        return keep_configs(configs, named["D"], lambda c: _demand(c, esize, meta["BLOCK_N"], backward))
    return prune


def _demand(c, esize: int, bn: int, backward: bool) -> tuple[float, float]:
    """(estimated registers per thread, shared bytes) of config c."""
    bd, w = c.kwargs["BLOCK_D"], c.num_warps
    if w > 8 and bn < 64:
        return math.inf, math.inf  # 16 warps only pay for the large N x N tiles (and spill on small ones)
    if bd > 32 if esize >= 4 else bd < 32:
        return math.inf, math.inf  # fp32/fp64: X X^T's FMA dot reduces over BLOCK_D, keep it short
    regs = REGISTERS[backward, esize <= 2]((bn * bn, bn * bd), w, fp64=esize == 8)
    shared = c.num_stages * 2 * bn * bd * esize + 2 * bn * bn * 4
    return regs, shared


def _configs(block_d):
    """Autotune configs; the first that survives pruning is also the one the interpreter runs."""
    return [config(w, BLOCK_D=bd) for bd in block_d for w in (4, 8, 16)]


FORWARD_CONFIGS = _configs((64, 32, 128, 16))
# BLOCK_D 128 in the backward took up to 241 registers on sm_90, and spilled 48 B at odd D.
BACKWARD_CONFIGS = _configs((64, 32, 16))


@triton.jit
def _rows(ptr, base, offs_n, offs_d, N, D, row_stride, EVEN_D: tl.constexpr):
    """Rows offs_n, columns offs_d of one clip-head's (N, D) matrix (rows row_stride apart).
    Rows beyond N repeat row N - 1 (the kernels give them no weight); columns beyond D are 0.
    Clamped addresses instead of a masked load: a predicate per element, which ptxas spilled."""
    rows = ptr + base + tl.minimum(offs_n, N - 1)[:, None] * row_stride
    if EVEN_D:
        x = tl.load(rows + offs_d[None, :])
    else:
        x = tl.load(rows + tl.minimum(offs_d, D - 1)[None, :])
        x = tl.where(offs_d[None, :] < D, x, 0.0)
    return x


@triton.jit
def _clip_head(pid, N, K, D):
    """Offset of x[b, 0, k, 0] for program pid = b * K + k (int64: B x N x K x D can pass 2^31)."""
    b = pid // K
    return (b.to(tl.int64) * N * K + (pid - b * K)) * D


@triton.jit
def _softmax(a, bias_ptr, scale, offs_n, N, FP64: tl.constexpr):
    """C = row-softmax(scale * a + bias) over the N valid columns (padded rows stay finite)."""
    valid = offs_n[None, :] < N
    bias = upcast(tl.load(bias_ptr + offs_n[:, None] * N + offs_n[None, :],
                          mask=(offs_n[:, None] < N) & valid, other=0.0), FP64)
    s = tl.where(valid, scale * a + bias, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _scale(scale_hi, scale_lo, FP64: tl.constexpr):
    """The scale in the compute dtype. It arrives as two float32 halves (hi + lo) so that fp64
    runs see it to fp64 precision."""
    if FP64:
        s = tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)
    else:
        s = tl.cast(scale_hi, tl.float32)
    return s


@triton.autotune(FORWARD_CONFIGS, key=["N", "K", "D"],
                 prune_configs_by={"early_config_prune": _pruner(backward=False)})
@triton.heuristics({"EVEN_D": even_d})
@triton.jit
def _forward_kernel(x_ptr, bias_ptr, out_ptr, scale_hi, scale_lo, N, K, D,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, FP64: tl.constexpr):
    base = _clip_head(tl.program_id(0), N, K, D)
    offs_n = tl.arange(0, BLOCK_N)
    acc_t = tl.float64 if FP64 else tl.float32
    a = tl.zeros((BLOCK_N, BLOCK_N), acc_t)
    for d0 in range(0, D, BLOCK_D):
        x = _rows(x_ptr, base, offs_n, d0 + tl.arange(0, BLOCK_D), N, D, K * D, EVEN_D)
        a = mma(x, tl.trans(x), a, FP64)                                                   # X X^T
    c = _softmax(a, bias_ptr, _scale(scale_hi, scale_lo, FP64), offs_n, N, FP64).to(x_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        x = _rows(x_ptr, base, offs_n, offs_d, N, D, K * D, EVEN_D)
        out = mma(c, x, tl.zeros((BLOCK_N, BLOCK_D), acc_t), FP64)                        # C X
        tl.store(out_ptr + base + offs_n[:, None] * K * D + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(offs_n[:, None] < N) & (offs_d[None, :] < D))


@triton.autotune(BACKWARD_CONFIGS, key=["N", "K", "D"],
                 prune_configs_by={"early_config_prune": _pruner(backward=True)})
@triton.heuristics({"EVEN_D": even_d})
@triton.jit
def _backward_kernel(grad_ptr, x_ptr, bias_ptr, grad_x_ptr, grad_scores_ptr, scale_hi, scale_lo, N, K, D,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, FP64: tl.constexpr):
    pid = tl.program_id(0)
    base = _clip_head(pid, N, K, D)
    offs_n = tl.arange(0, BLOCK_N)
    acc_t = tl.float64 if FP64 else tl.float32
    a = tl.zeros((BLOCK_N, BLOCK_N), acc_t)
    dc = tl.zeros((BLOCK_N, BLOCK_N), acc_t)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        x = _rows(x_ptr, base, offs_n, offs_d, N, D, K * D, EVEN_D)
        g = _rows(grad_ptr, base, offs_n, offs_d, N, D, K * D, EVEN_D)
        a = mma(x, tl.trans(x), a, FP64)                                                   # X X^T
        dc = mma(g, tl.trans(x), dc, FP64)                                                 # dOut X^T
    scale = _scale(scale_hi, scale_lo, FP64)
    mask_nn = (offs_n[:, None] < N) & (offs_n[None, :] < N)
    c = tl.where(mask_nn, _softmax(a, bias_ptr, scale, offs_n, N, FP64), 0.0)  # padded rows: repeated frames
    da = tl.where(mask_nn, c * (dc - tl.sum(c * dc, axis=1)[:, None]), 0.0)
    tl.store(grad_scores_ptr + (pid.to(tl.int64) * N + offs_n[:, None]) * N + offs_n[None, :], da, mask=mask_nn)
    c_t = tl.trans(c).to(x_ptr.dtype.element_ty)
    sym = (scale * (da + tl.trans(da))).to(x_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        x = _rows(x_ptr, base, offs_n, offs_d, N, D, K * D, EVEN_D)
        g = _rows(grad_ptr, base, offs_n, offs_d, N, D, K * D, EVEN_D)
        dx = mma(sym, x, mma(c_t, g, tl.zeros((BLOCK_N, BLOCK_D), acc_t), FP64), FP64)  # C^T dOut + scale (dA + dA^T) X
        tl.store(grad_x_ptr + base + offs_n[:, None] * K * D + offs_d[None, :], dx.to(grad_x_ptr.dtype.element_ty),
                 mask=(offs_n[:, None] < N) & (offs_d[None, :] < D))


# ------------------------------------------------------------------------------- workspace path (larger N)
@triton.jit
def _pairs_kernel(a_ptr, b_ptr, bias_ptr, out_ptr, scale_hi, scale_lo, N, K, D, HAS_BIAS: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, FP64: tl.constexpr):
    """out[p, i, j] = scale * A_i . B_j (+ bias[i, j]) for a tile of rows i and one of rows j."""
    pid = tl.program_id(0)
    base = _clip_head(pid, N, K, D)
    offs_i = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N, BLOCK_N), tl.float64 if FP64 else tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        acc = mma(_rows(a_ptr, base, offs_i, offs_d, N, D, K * D, EVEN_D),
                  tl.trans(_rows(b_ptr, base, offs_j, offs_d, N, D, K * D, EVEN_D)), acc, FP64)
    mask = (offs_i[:, None] < N) & (offs_j[None, :] < N)
    acc = acc * _scale(scale_hi, scale_lo, FP64)
    if HAS_BIAS:
        acc += upcast(tl.load(bias_ptr + offs_i[:, None] * N + offs_j[None, :], mask=mask, other=0.0), FP64)
    tl.store(out_ptr + (pid.to(tl.int64) * N + offs_i[:, None]) * N + offs_j[None, :], acc, mask=mask)


@triton.jit
def _rows_kernel(s_ptr, ds_ptr, N, GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                 FP64: tl.constexpr):
    """In place, per row of each N x N matrix: s <- softmax(s) (GRAD False), or with s = C,
    ds <- C (ds - rowsum(C ds)) (GRAD True)."""
    base = tl.program_id(0).to(tl.int64) * N * N
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    acc_t = tl.float64 if FP64 else tl.float32
    row_max = tl.full((BLOCK_R,), float("-inf"), acc_t)
    row_sum = tl.zeros((BLOCK_R,), acc_t)  # softmax: sum of exp; backward: rowsum(C dC)
    for sweep in tl.static_range(2):
        for c0 in range(0, N, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask = (offs_r[:, None] < N) & (offs_c[None, :] < N)
            offs = base + offs_r[:, None] * N + offs_c[None, :]
            s = tl.load(s_ptr + offs, mask=mask, other=0.0)
            if GRAD:
                ds = tl.load(ds_ptr + offs, mask=mask, other=0.0)
                if sweep == 0:
                    row_sum += tl.sum(s * ds, axis=1)
                else:
                    tl.store(ds_ptr + offs, s * (ds - row_sum[:, None]), mask=mask)
            else:
                s = tl.where(offs_c[None, :] < N, s, float("-inf"))
                if sweep == 0:
                    new_max = tl.maximum(row_max, tl.max(s, axis=1))
                    row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
                    row_max = new_max
                else:
                    tl.store(s_ptr + offs, tl.exp(s - row_max[:, None]) / row_sum[:, None], mask=mask)


@triton.jit
def _mix_kernel(w_ptr, y_ptr, w2_ptr, y2_ptr, out_ptr, scale_hi, scale_lo, N, K, D, TRANS: tl.constexpr,
                SECOND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
                FP64: tl.constexpr):
    """out_r = sum_c W[r, c] Y_c (W[c, r] with TRANS) + scale * sum_c (W2[r, c] + W2[c, r]) Y2_c
    for a tile of rows r and a D tile of one clip-head."""
    pid = tl.program_id(0)
    base = _clip_head(pid, N, K, D)
    w_base = pid.to(tl.int64) * N * N
    offs_r = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    scale = _scale(scale_hi, scale_lo, FP64)
    acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float64 if FP64 else tl.float32)
    for c0 in range(0, N, BLOCK_N):
        offs_c = c0 + tl.arange(0, BLOCK_N)
        mask = (offs_r[:, None] < N) & (offs_c[None, :] < N)
        r, c = tl.minimum(offs_r, N - 1), tl.minimum(offs_c, N - 1)  # clamped, then zeroed outside N x N
        rc = w_base + r[:, None] * N + c[None, :]
        cr = w_base + c[None, :] * N + r[:, None]
        w = tl.where(mask, tl.load(w_ptr + (cr if TRANS else rc)), 0.0)
        y = _rows(y_ptr, base, offs_c, offs_d, N, D, K * D, EVEN_D)
        acc = mma(w.to(y.dtype), y, acc, FP64)
        if SECOND:
            w2 = tl.where(mask, tl.load(w2_ptr + rc) + tl.load(w2_ptr + cr), 0.0)
            y2 = _rows(y2_ptr, base, offs_c, offs_d, N, D, K * D, EVEN_D)
            acc = mma((scale * w2).to(y2.dtype), y2, acc, FP64)
    tl.store(out_ptr + base + offs_r[:, None] * K * D + offs_d[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_r[:, None] < N) & (offs_d[None, :] < D))


def register_path(n: int, dtype: torch.dtype, backward: bool) -> bool:
    """Whether N x N stays in registers (else the workspace path)."""
    return n <= (N_REGISTER_MAX_BACKWARD_OR_FP32 if backward or dtype.itemsize > 2 else N_REGISTER_MAX)


def _scale_halves(scale: float) -> tuple[float, float]:
    """scale as float32 hi + lo (see _scale)."""
    hi = float(np.float32(scale))
    return hi, float(np.float32(scale - hi))


def _options(tiles: dict) -> dict:
    """The workspace kernels' tile constexprs and launch options."""
    return {"BLOCK_N": tiles["BLOCK_N"], "BLOCK_D": tiles["BLOCK_D"], **options(tiles["num_warps"])}


def _workspace_scores(a, b, bias, scale, fp64):
    """(B*K, N, N) fp32 (fp64) workspace of scale * A_i . B_j (+ bias) for all row pairs."""
    bsz, n, k, d = a.shape
    ws = torch.empty(bsz * k, n, n, dtype=acc_dtype(a.dtype), device=a.device)
    tiles = WORKSPACE[a.dtype.itemsize]
    row_tiles = triton.cdiv(n, tiles["BLOCK_N"])
    launch(_pairs_kernel, (bsz * k, row_tiles, row_tiles), a, b, bias, ws, *_scale_halves(scale), n, k, d,
           HAS_BIAS=bias is not None, EVEN_D=d % tiles["BLOCK_D"] == 0, FP64=fp64, **_options(tiles))
    return ws


def _workspace_rows(s, ds, fp64):
    p, n, _ = s.shape
    block_r = 16
    launch(_rows_kernel, (p, triton.cdiv(n, block_r)), s, s if ds is None else ds, n, GRAD=ds is not None,
           BLOCK_R=block_r, BLOCK_C=tile(n, hi=128), FP64=fp64, **options(4))


def _workspace_mix(w, y, w2, y2, out, scale, trans, fp64):
    bsz, n, k, d = y.shape
    tiles = WORKSPACE[y.dtype.itemsize]
    grid = (bsz * k, triton.cdiv(n, tiles["BLOCK_N"]), triton.cdiv(d, tiles["BLOCK_D"]))
    launch(_mix_kernel, grid, w, y, w if w2 is None else w2, y if y2 is None else y2, out, *_scale_halves(scale),
           n, k, d, TRANS=trans, SECOND=w2 is not None, EVEN_D=d % tiles["BLOCK_D"] == 0, FP64=fp64,
           **_options(tiles))


def forward(x: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    x, bias = x.contiguous(), bias.contiguous()
    b, n, k, d = x.shape
    out = torch.empty_like(x)
    fp64 = is_fp64(x)
    with device_guard(x):
        if register_path(n, x.dtype, backward=False):
            launch(_forward_kernel, (b * k,), x, bias, out, *_scale_halves(scale), n, k, d, BLOCK_N=tile(n),
                   FP64=fp64)
        else:
            c = _workspace_scores(x, x, bias, scale, fp64)
            _workspace_rows(c, None, fp64)
            _workspace_mix(c, x, None, None, out, 1.0, False, fp64)
    return out


def backward(grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor,
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    grad, x, bias = grad.contiguous(), x.contiguous(), bias.contiguous()
    b, n, k, d = x.shape
    grad_x = torch.empty_like(x)
    fp64 = is_fp64(x)
    with device_guard(x):
        if register_path(n, x.dtype, backward=True):
            grad_scores = torch.empty(b * k, n, n, device=x.device, dtype=acc_dtype(x.dtype))
            launch(_backward_kernel, (b * k,), grad, x, bias, grad_x, grad_scores, *_scale_halves(scale), n, k, d,
                   BLOCK_N=tile(n), FP64=fp64)
        else:
            c = _workspace_scores(x, x, bias, scale, fp64)
            _workspace_rows(c, None, fp64)
            grad_scores = _workspace_scores(grad, x, None, 1.0, fp64)   # dC = dOut X^T
            _workspace_rows(c, grad_scores, fp64)                                          # -> dA
            _workspace_mix(c, grad, grad_scores, x, grad_x, scale, True, fp64)
    return grad_x, grad_scores.sum(dim=0).to(bias.dtype)


def examples(shape: dict, dtype: torch.dtype, make) -> list[tuple[str, object, tuple]]:
    """(stage, launcher, arguments) at a model shape (see stafast.kernels.OPS)."""
    b, n, k, d = shape["B"], shape["N"], shape["K"], shape["D"]
    x, bias = make(b, n, k, d, dtype=dtype), make(n, n, dtype=dtype)
    return [("forward", forward, (x, bias, 0.05)), ("backward", backward, (make(b, n, k, d, dtype=dtype), x, bias, 0.05))]
