"""Shapes, input factories, tolerances and the backend list shared by every op test (all backends).

Tensors are made on STAFAST_TEST_DEVICE (default cpu; the GPU check runs the same tests with cuda).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from stafast.ops import OPS, available_backends

# Each op's spec lists the shapes it is tested at (odd on purpose; the comments there say which tiles
# of which backend each one reaches).
SSP_SHAPES = list(OPS["spatial_softmax_pool"].spec.test_shapes)  # (M, K, L, D)
DIV_SHAPES = list(OPS["diversity_penalty"].spec.test_shapes)     # (M, K, L)
FA_SHAPES = list(OPS["frame_attention"].spec.test_shapes)        # (B, N, K, D)
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-9, atol=1e-10),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2), torch.float16: dict(rtol=5e-3, atol=5e-3)}

DEVICE = os.environ.get("STAFAST_TEST_DEVICE", "cpu")
BACKENDS = available_backends(DEVICE)
backends = pytest.mark.parametrize("backend_name", BACKENDS)
# Every backend in both 16-bit dtypes, except bfloat16 Triton on the CPU: the interpreter refuses it
# (its tl.dot is wrong for bfloat16, triton issue 11584; test_registration checks the refusal), so
# bf16 Triton runs are checked on the GPU (bench/gpu_check.sh). Its float16 is exact.
low_precision = pytest.mark.parametrize("backend_name, dtype", [
    (b, dtype) for b in BACKENDS for dtype in (torch.bfloat16, torch.float16)
    if not (b == "triton" and DEVICE == "cpu" and dtype == torch.bfloat16)])


def ssp_inputs(shape, dtype=torch.float64, requires_grad=False):
    logits, feats = OPS["spatial_softmax_pool"].spec.inputs(shape, dtype, DEVICE)
    return logits.requires_grad_(requires_grad), feats.requires_grad_(requires_grad)


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
    x, bias, scale = OPS["frame_attention"].spec.inputs(shape, dtype, DEVICE)
    return x.requires_grad_(requires_grad), bias.requires_grad_(requires_grad), scale


def like(t: torch.Tensor) -> torch.Tensor:
    """Random upstream gradient of t's shape and dtype (never all zeros)."""
    return torch.randn_like(t)


def close(actual, expected, dtype, what=""):
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(), **TOL[dtype],
                               msg=lambda m: f"{what}: {m}")


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()
