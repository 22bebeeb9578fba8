"""Input validation shared by the ops: errors name the argument, what it was and what was expected."""
from __future__ import annotations

import math

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(op: str, name: str, t, ndim: int, dims: str) -> Tensor:
    """`t` must be a floating tensor of `ndim` dims (named by `dims`, e.g. "(M, K, L)")."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor of shape {dims}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have shape {dims} ({ndim} dims), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if any(s == 0 for s in t.shape):
        raise ValueError(f"{op}: {name} of shape {dims} must not be empty, got shape {tuple(t.shape)}")
    return t


def same(op: str, names: tuple[str, str], a: Tensor, b: Tensor) -> None:
    """`a` and `b` must share dtype and device."""
    if a.dtype != b.dtype:
        raise ValueError(f"{op}: {names[0]} and {names[1]} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{op}: {names[0]} and {names[1]} must be on the same device, got {a.device} and {b.device}")


def dim(op: str, name: str, t: Tensor, axis: int, expected: int, what: str, expected_shape: str) -> None:
    if t.shape[axis] != expected:
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)} but {what} must be {expected}; "
                         f"expected shape {expected_shape}")


def finite(op: str, name: str, value) -> float:
    if isinstance(value, Tensor):
        raise ValueError(f"{op}: {name} must be a Python float, got a Tensor")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be a finite float, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be a finite float, got {value}")
    return value


def choice(op: str, name: str, value, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{op}: {name} must be one of {options}, got {value!r}")
    return value
