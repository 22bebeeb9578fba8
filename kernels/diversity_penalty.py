"""Triton kernels for diversity_penalty (Eq. 9 Hellinger Q, Eq. 10 Q').

One program per frame: the K x L attention block, R = sqrt(S) (or S), the K x K Gram matrix
G = R R^T and E = G - I all live in registers; forward writes ||E||_F^2, backward writes
dS = g * 2 (E R) / R (Hellinger; 0 where S = 0, as the reference defines) or g * 4 E S (l2).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block, device_guard, is_fp64, upcast


@triton.jit
def _gram_minus_identity(attn_ptr, m, K, L, HELLINGER: tl.constexpr,
                         BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, FP64: tl.constexpr):
    """(S, R, E) of frame m; rows/columns beyond K and L are zero (E too)."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_l = tl.arange(0, BLOCK_L)
    s = upcast(tl.load(attn_ptr + m * K * L + offs_k[:, None] * L + offs_l[None, :],
                       mask=(offs_k[:, None] < K) & (offs_l[None, :] < L), other=0.0), FP64)
    if HELLINGER:
        r = tl.sqrt(tl.where(s > 0, s, 0.0))
    else:
        r = s
    gram = tl.sum(r[:, None, :] * r[None, :, :], axis=2)                          # (BLOCK_K, BLOCK_K)
    eye = (offs_k[:, None] == offs_k[None, :]) & (offs_k[:, None] < K)
    return s, r, gram - tl.where(eye, 1.0, 0.0)


@triton.jit
def _forward_kernel(attn_ptr, q_ptr, K, L, HELLINGER: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, FP64: tl.constexpr):
    m = tl.program_id(0)
    _, _, e = _gram_minus_identity(attn_ptr, m, K, L, HELLINGER, BLOCK_K, BLOCK_L, FP64)
    tl.store(q_ptr + m, tl.sum(tl.sum(e * e, axis=1), axis=0).to(q_ptr.dtype.element_ty))


@triton.jit
def _backward_kernel(grad_ptr, attn_ptr, grad_attn_ptr, K, L, HELLINGER: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_L: tl.constexpr, FP64: tl.constexpr):
    m = tl.program_id(0)
    offs_k = tl.arange(0, BLOCK_K)
    offs_l = tl.arange(0, BLOCK_L)
    s, r, e = _gram_minus_identity(attn_ptr, m, K, L, HELLINGER, BLOCK_K, BLOCK_L, FP64)
    g = upcast(tl.load(grad_ptr + m), FP64)
    er = tl.sum(e[:, :, None] * r[None, :, :], axis=1)                            # E R, (BLOCK_K, BLOCK_L)
    if HELLINGER:
        positive = s > 0
        d = tl.where(positive, 2.0 * er / tl.where(positive, r, 1.0), 0.0) * g
    else:
        d = 4.0 * er * g
    tl.store(grad_attn_ptr + m * K * L + offs_k[:, None] * L + offs_l[None, :],
             d.to(grad_attn_ptr.dtype.element_ty), mask=(offs_k[:, None] < K) & (offs_l[None, :] < L))


def _q_dtype(attn: torch.Tensor) -> torch.dtype:
    return torch.float32 if attn.dtype in (torch.float16, torch.bfloat16) else attn.dtype


def forward(attn: torch.Tensor, kind: str) -> torch.Tensor:
    attn = attn.contiguous()
    m, k, l = attn.shape
    q = torch.empty(m, dtype=_q_dtype(attn), device=attn.device)
    with device_guard(attn):
        _forward_kernel[(m,)](attn, q, k, l, HELLINGER=kind == "hellinger",
                              BLOCK_K=block(k), BLOCK_L=block(l), FP64=is_fp64(attn))
    return q


def backward(grad: torch.Tensor, attn: torch.Tensor, kind: str) -> torch.Tensor:
    grad, attn = grad.contiguous(), attn.contiguous()
    m, k, l = attn.shape
    grad_attn = torch.empty_like(attn)
    with device_guard(attn):
        _backward_kernel[(m,)](grad, attn, grad_attn, k, l, HELLINGER=kind == "hellinger",
                               BLOCK_K=block(k), BLOCK_L=block(l), FP64=is_fp64(attn))
    return grad_attn
