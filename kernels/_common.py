"""Shared launcher helpers: interpreter detection, autotune configs kept as data, compute dtype."""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Read when the kernels are imported: triton.jit itself decides interpreter or compiler then.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("0", "")


def autotune(configs: list[triton.Config], key: list[str]):
    """triton.autotune over `configs` on a GPU; pinned to the first config under the interpreter
    (which cannot time configs and runs them slowly)."""
    return triton.autotune(configs=configs[:1] if INTERPRET else configs, key=key)


def configs(block_d: list[int], warps: list[int]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_D": bd}, num_warps=w) for bd in block_d for w in warps]


def block(n: int) -> int:
    """Power-of-two block that covers n (at least 2, so no axis degenerates)."""
    return max(2, triton.next_power_of_2(n))


def is_fp64(t: torch.Tensor) -> bool:
    return t.dtype == torch.float64


def device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@triton.jit
def upcast(x, FP64: tl.constexpr):
    """Compute dtype: float64 for float64 inputs, float32 for everything else."""
    if FP64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y
