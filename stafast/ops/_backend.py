"""Which implementation runs an op: `reference`, `triton` or `ext`.

Choice, highest priority first: the innermost `with stafast.ops.backend(name)`, the
environment variable STAFAST_BACKEND, then "auto" = the fastest backend available for the
tensor's device (CUDA: triton, ext, reference; CPU: ext, reference).  The Triton backend runs
CPU tensors only under TRITON_INTERPRET=1, which is how kernels are tested without a GPU; it is
never picked automatically for CPU tensors there (the interpreter is slow).

The choice is read when the op runs, inside the registered custom op, so it also applies to
torch.compile'd code (the op is opaque to the compiler).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from typing import Callable

import torch

BACKENDS = ("reference", "triton", "ext")
_AUTO_ORDER = {"cuda": ("triton", "ext", "reference"), "cpu": ("ext", "reference")}
# The backend chosen by `backend()`: a module global, not a ContextVar, because torch.compile
# guards on a global's value (a new choice recompiles) in every torch we support, while torch 2.11
# (the GPU machine's) cannot trace ContextVar.get at all. So the choice is per process, not per thread.
_override: str | None = None
_broken: dict[str, str] = {}  # backend -> why it failed at run time (auto mode falls back)
_probe: dict[str, str | None] = {}  # backend -> None if importable, else the reason


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "")


def _why_unavailable(name: str) -> str | None:
    """None if `name` can be imported here, else the reason (cached)."""
    if name not in _probe:
        try:
            if name == "triton":
                importlib.import_module("stafast.kernels")
            elif name == "ext":
                importlib.import_module("stafast._C")
            _probe[name] = None
        except Exception as e:  # noqa: BLE001 - any import failure means unavailable
            _probe[name] = f"{type(e).__name__}: {e}"
            if name == "ext":
                warnings.warn("stafast: the C++/CUDA extension stafast._C is not built "
                              f"({_probe[name]}); using the other backends.", RuntimeWarning, stacklevel=3)
    return _probe[name]


def _works_on(name: str, device_type: str) -> bool:
    if name == "reference":
        return True
    if _why_unavailable(name) is not None:
        return False
    if name == "triton":
        return device_type == "cuda" or (device_type == "cpu" and triton_interpret())
    if name == "ext":
        return device_type == "cpu" or (device_type == "cuda" and bool(torch.ops.stafast_ext.has_cuda()))
    return False


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Backends that can run on `device` (default: CUDA if present, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return [b for b in BACKENDS if _works_on(b, device_type)]


def _check_name(name: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown stafast backend {name!r}; expected one of {('auto',) + BACKENDS}")
    return name


@contextlib.contextmanager
def backend(name: str):
    """Run the stafast ops inside this block with backend `name` ("auto", "reference", "triton", "ext")."""
    global _override
    previous, _override = _override, _check_name(name)
    try:
        yield
    finally:
        _override = previous


def requested() -> str:
    name = _override or os.environ.get("STAFAST_BACKEND") or "auto"
    return _check_name(name.strip().lower())


def inline_reference() -> bool:
    """Under torch.compile with the reference backend chosen, the public ops call the plain PyTorch
    spec directly, so the compiler fuses it like any PyTorch code (this is "torch.compile of the
    reference" in the benchmarks); otherwise they go through the registered, opaque custom op."""
    return torch.compiler.is_compiling() and requested() == "reference"


def resolve(device: torch.device) -> list[str]:
    """Backends to try, in order, for a tensor on `device`."""
    name = requested()
    if name != "auto":
        if not _works_on(name, device.type):
            why = _probe.get(name) or f"it does not run on {device.type} tensors here"
            if name == "triton" and device.type == "cpu":
                why += " (set TRITON_INTERPRET=1 before importing stafast to run Triton on the CPU)"
            raise RuntimeError(f"stafast backend {name!r} was requested but {why}; "
                               f"available on {device.type}: {available_backends(device)}")
        return [name]
    order = _AUTO_ORDER.get(device.type, ("reference",))
    return [b for b in order if b not in _broken and _works_on(b, device.type)] or ["reference"]


def implementations(name: str, forward: Callable, backward: Callable) -> dict[str, Callable[[], tuple]]:
    """The backend table of op `name`: the reference functions, the Triton launchers of
    stafast.kernels.<name> and the extension's stafast_ext::<name>(_backward), each imported on use."""
    def triton():
        kernels = importlib.import_module(f"stafast.kernels.{name}")
        return kernels.forward, kernels.backward

    def ext():
        return getattr(torch.ops.stafast_ext, name), getattr(torch.ops.stafast_ext, f"{name}_backward")

    return {"reference": lambda: (forward, backward), "triton": triton, "ext": ext}


def dispatch(impls: dict[str, Callable[[], tuple[Callable, ...]]], stage: int, device: torch.device, *args):
    """Run stage `stage` (0 forward, 1 backward) of an op with the chosen backend.

    `impls[name]()` returns the (forward, backward) callables of backend `name`; it is called
    lazily so that a backend is imported only when used.  In auto mode a backend that fails
    to compile or launch is reported once and the next one is used.
    """
    candidates = resolve(device)
    for i, name in enumerate(candidates):
        try:
            return impls[name]()[stage](*args)
        except Exception as e:  # noqa: BLE001
            if len(candidates) == 1 or i == len(candidates) - 1 or requested() != "auto":
                raise
            _broken[name] = f"{type(e).__name__}: {e}"
            warnings.warn(f"stafast: backend {name!r} failed ({_broken[name]}); falling back to "
                          f"{candidates[i + 1]!r} for the rest of this process.", RuntimeWarning)
    raise AssertionError("unreachable")

