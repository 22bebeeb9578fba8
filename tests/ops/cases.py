"""Shapes, input factories, tolerances and the backend list shared by every op test (all backends).

Tensors are made on STAFAST_TEST_DEVICE (default cpu; the GPU check runs the same tests with cuda).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from stafast.ops import available_backends

# Odd sizes on purpose: K = 1, N = 1, L not a power of two, D not a multiple of 16; M = 37 is several
# 8- or 16-frame lane blocks and a partial one. spatial_softmax_pool's CPU tiles (6 heads x 2-3 rows,
# 6 heads x 2-4 vectors of channels) get full tiles followed by smaller last tiles of every size:
# K = 7 and 9, L = 5 to 50, D = 115 (64 + 48 + 3 channels in fp32).
# The Triton kernels tile L, K, N and D: the last shapes of each list take several tiles of each at a
# small M (L > 256: several L tiles; K > 16, 32 and 64: K tiles, backward head groups; N > 16: N
# tiles, N > 64 and > 128: the frame attention's workspace path).
SSP_SHAPES = [(1, 1, 1, 1), (3, 1, 7, 5), (4, 6, 32, 33), (2, 3, 13, 70), (5, 2, 50, 17), (2, 9, 6, 40),
              (2, 7, 5, 115), (2, 20, 300, 37), (1, 70, 9, 21)]  # (M, K, L, D)
DIV_SHAPES = [(1, 1, 1), (3, 1, 7), (5, 6, 32), (2, 4, 13), (1, 8, 50), (37, 6, 32), (19, 9, 5),
              (2, 20, 300), (1, 70, 33)]                                                     # (M, K, L)
FA_SHAPES = [(1, 1, 1, 1), (2, 1, 3, 5), (3, 6, 2, 33), (1, 4, 1, 70), (2, 7, 6, 19), (2, 20, 2, 37),
             (1, 70, 1, 9), (1, 150, 1, 5)]                                                  # (B, N, K, D)
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-10),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2), torch.float16: dict(rtol=5e-3, atol=5e-3)}

DEVICE = os.environ.get("STAFAST_TEST_DEVICE", "cpu")
BACKENDS = available_backends(DEVICE)
backends = pytest.mark.parametrize("backend_name", BACKENDS)
# The Triton interpreter has no 16-bit math: bf16/fp16 Triton runs are checked on the GPU (bench/gpu_check.sh).
low_precision_backends = pytest.mark.parametrize(
    "backend_name", [b for b in BACKENDS if b != "triton" or DEVICE != "cpu"])


def ssp_inputs(shape, dtype=torch.float64, requires_grad=False):
    m, k, l, d = shape
    logits = (2 * torch.randn(m, k, l, dtype=dtype, device=DEVICE)).requires_grad_(requires_grad)
    feats = torch.randn(m, l, d, dtype=dtype, device=DEVICE).requires_grad_(requires_grad)
    return logits, feats


def attn_inputs(shape, dtype=torch.float64, requires_grad=False, zeros=False, spread=3.0):
    """Rows that are distributions; with zeros=True about a third of the entries are exact zeros.
    A small `spread` keeps entries away from 0 (for finite differences)."""
    s = torch.softmax(spread * torch.randn(shape, dtype=torch.float64), dim=-1)
    if zeros:
        s = s * (torch.rand(shape, dtype=torch.float64) > 0.35)
        s[..., 0] += 1e-3  # keep every row non-empty
        s = s / s.sum(-1, keepdim=True)
    return s.to(dtype=dtype, device=DEVICE).requires_grad_(requires_grad)


def fa_inputs(shape, dtype=torch.float64, requires_grad=False):
    b, n, k, d = shape
    x = torch.randn(b, n, k, d, dtype=dtype, device=DEVICE).requires_grad_(requires_grad)
    bias = torch.randn(n, n, dtype=dtype, device=DEVICE).requires_grad_(requires_grad)
    scale = float(np.random.default_rng(torch.randint(0, 2**31, ()).item()).uniform(0.1, 1.0))
    return x, bias, scale


def like(t: torch.Tensor) -> torch.Tensor:
    """Random upstream gradient of t's shape and dtype (never all zeros)."""
    return torch.randn_like(t)


def close(actual, expected, dtype, what=""):
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(), **TOL[dtype],
                               msg=lambda m: f"{what}: {m}")


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()
