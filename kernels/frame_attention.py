"""Triton kernels for frame_attention (supplementary Eqs. 1-3, rows as the text says).

One program per (clip b, head k), D tiled.  Forward: pass 1 accumulates A = X X^T over D
tiles, C = row-softmax(scale A + bias) stays in registers (N x N), pass 2 writes C X tile by
tile.  Backward: pass 1 accumulates A and dC = dOut X^T together, dA = C (dC - rowsum(C dC))
is written for the bias gradient (summed over clips and heads by the launcher), pass 2 writes
dX = C^T dOut + scale (dA + dA^T) X.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import autotune, block, configs, device_guard, is_fp64, upcast

CONFIGS = configs(block_d=[32, 64, 128, 256], warps=[4, 2, 8])


@triton.jit
def _tile(ptr, b, k, N, K, D, d0, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP64: tl.constexpr):
    """Rows x[b, :, k, d0:d0 + BLOCK_D] as (BLOCK_N, BLOCK_D), zero-padded."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = d0 + tl.arange(0, BLOCK_D)
    ptrs = ptr + ((b * N + offs_n[:, None]) * K + k) * D + offs_d[None, :]
    return upcast(tl.load(ptrs, mask=(offs_n[:, None] < N) & (offs_d[None, :] < D), other=0.0), FP64)


@triton.jit
def _store_tile(ptr, value, b, k, N, K, D, d0, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = d0 + tl.arange(0, BLOCK_D)
    ptrs = ptr + ((b * N + offs_n[:, None]) * K + k) * D + offs_d[None, :]
    tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_d[None, :] < D))


@triton.jit
def _softmax(a, bias_ptr, scale, N, BLOCK_N: tl.constexpr, FP64: tl.constexpr):
    """C = row-softmax(scale * a + bias) over the N valid columns."""
    offs_n = tl.arange(0, BLOCK_N)
    valid_col = offs_n[None, :] < N
    bias = upcast(tl.load(bias_ptr + offs_n[:, None] * N + offs_n[None, :],
                          mask=(offs_n[:, None] < N) & valid_col, other=0.0), FP64)
    s = tl.where(valid_col, scale * a + bias, float("-inf"))
    p = tl.exp(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@autotune(CONFIGS, key=["N", "K", "D"])
@triton.jit
def _forward_kernel(x_ptr, bias_ptr, out_ptr, scale, N, K, D,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP64: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // K
    k = pid % K
    a = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float64 if FP64 else tl.float32)
    for d0 in range(0, D, BLOCK_D):
        x = _tile(x_ptr, b, k, N, K, D, d0, BLOCK_N, BLOCK_D, FP64)
        a += tl.sum(x[:, None, :] * x[None, :, :], axis=2)
    c = _softmax(a, bias_ptr, scale, N, BLOCK_N, FP64)
    for d0 in range(0, D, BLOCK_D):
        x = _tile(x_ptr, b, k, N, K, D, d0, BLOCK_N, BLOCK_D, FP64)
        _store_tile(out_ptr, tl.sum(c[:, :, None] * x[None, :, :], axis=1), b, k, N, K, D, d0, BLOCK_N, BLOCK_D)


@autotune(CONFIGS, key=["N", "K", "D"])
@triton.jit
def _backward_kernel(grad_ptr, x_ptr, bias_ptr, grad_x_ptr, grad_scores_ptr, scale, N, K, D,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP64: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // K
    k = pid % K
    a = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float64 if FP64 else tl.float32)
    dc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float64 if FP64 else tl.float32)
    for d0 in range(0, D, BLOCK_D):
        x = _tile(x_ptr, b, k, N, K, D, d0, BLOCK_N, BLOCK_D, FP64)
        g = _tile(grad_ptr, b, k, N, K, D, d0, BLOCK_N, BLOCK_D, FP64)
        a += tl.sum(x[:, None, :] * x[None, :, :], axis=2)
        dc += tl.sum(g[:, None, :] * x[None, :, :], axis=2)                       # dOut X^T
    c = _softmax(a, bias_ptr, scale, N, BLOCK_N, FP64)
    da = c * (dc - tl.sum(c * dc, axis=1)[:, None])
    offs_n = tl.arange(0, BLOCK_N)
    tl.store(grad_scores_ptr + (pid * N + offs_n[:, None]) * N + offs_n[None, :], da,
             mask=(offs_n[:, None] < N) & (offs_n[None, :] < N))
    sym = scale * (da + tl.trans(da))
    for d0 in range(0, D, BLOCK_D):
        x = _tile(x_ptr, b, k, N, K, D, d0, BLOCK_N, BLOCK_D, FP64)
        g = _tile(grad_ptr, b, k, N, K, D, d0, BLOCK_N, BLOCK_D, FP64)
        dx = tl.sum(c[:, :, None] * g[:, None, :], axis=0) + tl.sum(sym[:, :, None] * x[None, :, :], axis=1)
        _store_tile(grad_x_ptr, dx, b, k, N, K, D, d0, BLOCK_N, BLOCK_D)


def forward(x: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    x, bias = x.contiguous(), bias.contiguous()
    b, n, k, d = x.shape
    out = torch.empty_like(x)
    with device_guard(x):
        _forward_kernel[(b * k,)](x, bias, out, scale, n, k, d, BLOCK_N=block(n), FP64=is_fp64(x))
    return out


def backward(grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    grad, x, bias = grad.contiguous(), x.contiguous(), bias.contiguous()
    b, n, k, d = x.shape
    grad_x = torch.empty_like(x)
    grad_scores = torch.empty(b * k, n, n, device=x.device, dtype=torch.float64 if is_fp64(x) else torch.float32)
    with device_guard(x):
        _backward_kernel[(b * k,)](grad, x, bias, grad_x, grad_scores, scale, n, k, d, BLOCK_N=block(n), FP64=is_fp64(x))
    return grad_x, grad_scores.sum(dim=0).to(bias.dtype)
