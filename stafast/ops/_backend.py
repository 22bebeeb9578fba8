"""Which implementation runs an op: `reference`, `triton` or `ext`, and which one did.

Choice, highest priority first: the innermost `with stafast.ops.backend(name)`, the
environment variable STAFAST_BACKEND, then "auto" = the fastest backend available for the
tensor's device (CUDA: triton, ext, reference; CPU: ext, reference).  The Triton backend runs
CPU tensors only under TRITON_INTERPRET=1, which is how kernels are tested without a GPU; auto
mode never picks the interpreter (it is slow, and wrong for bfloat16: see _spec.refuse_bfloat16).

Auto mode falls back to the next backend only on BackendUnavailable: the backend does not import,
the extension is not built or lacks the op, the Triton compiler failed.  That is reported by one
warning and holds for the rest of the process; every other error (out of memory, a failed
launch, a wrong shape, a kernel bug) propagates, so a failure is never hidden by a slower backend.

The choice is read when the op runs, inside the registered custom op, so it also applies to
torch.compile'd code (the op is opaque to the compiler).  `backends_ran()` tells which backend
each op actually ran on.
"""
from __future__ import annotations

import contextlib
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
_probe: dict[str, str | None] = {}  # backend -> None if it imports, else the reason (cached, warned once)
_off: dict[tuple[str, str], str] = {}  # (op, backend) -> why auto mode stopped using it at run time
_recorders: list[dict[str, str]] = []  # the dicts of the open backends_ran() blocks


class BackendUnavailable(RuntimeError):
    """A backend cannot run an op here: it does not import, the extension is not built or lacks
    the op, the Triton compiler failed, or the backend refuses these inputs.  The only error on
    which auto mode falls back to the next backend."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "")


def _import(name: str) -> None:
    if name == "triton":
        from stafast import kernels  # noqa: F401  (imports triton and every op's launchers)
    elif name == "ext":
        import stafast._C  # noqa: F401  (loads the library that registers torch.ops.stafast_ext)


def _why_unavailable(name: str) -> str | None:
    """None if backend `name` imports here, else the reason (probed once, warned once)."""
    if name not in _probe:
        try:
            _import(name)
            _probe[name] = None
        except Exception as e:  # noqa: BLE001 - any import failure means unavailable
            _probe[name] = f"{type(e).__name__}: {e}"
            what = ("the C++/CUDA extension stafast._C is not built" if name == "ext" else
                    "the Triton kernels stafast.kernels do not import")
            warnings.warn(f"stafast: {what} ({_probe[name]}); using the other backends.", RuntimeWarning,
                          stacklevel=4)
    return _probe[name]


def _works_on(name: str, device_type: str) -> bool:
    if name == "reference":
        return True
    if name == "triton" and not (device_type == "cuda" or (device_type == "cpu" and triton_interpret())):
        return False  # decided before probing: no import (nor its warning) where Triton cannot run anyway
    if device_type not in ("cpu", "cuda") or _why_unavailable(name) is not None:
        return False
    return name != "ext" or device_type == "cpu" or bool(torch.ops.stafast_ext.has_cuda())


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


def resolve(device: torch.device, op: str | None = None) -> list[str]:
    """Backends to try, in order, for op `op` on a tensor on `device`."""
    name = requested()
    if name != "auto":
        if not _works_on(name, device.type):
            why = _probe.get(name) or f"it does not run on {device.type} tensors here"
            if name == "triton" and device.type == "cpu":
                why += " (set TRITON_INTERPRET=1 before importing stafast to run Triton on the CPU)"
            raise BackendUnavailable(f"stafast backend {name!r} was requested but {why}; "
                                     f"available on {device.type}: {available_backends(device)}")
        return [name]
    return [b for b in _auto_order(device.type) if (op, b) not in _off and _works_on(b, device.type)] or ["reference"]


def _auto_order(device_type: str) -> tuple[str, ...]:
    """Auto mode's preference for a device; never the Triton interpreter."""
    order = _AUTO_ORDER.get(device_type, ("reference",))
    return tuple(b for b in order if b != "triton" or not triton_interpret())


def dispatch(op: str, implementation: Callable[[str], Callable], *args):
    """Run registered op `op` (a forward or a _backward op) on the chosen backend, with its tensors'
    device; `implementation(backend)` returns that backend's function (imported on first use).

    Auto mode moves on to the next backend only on BackendUnavailable (one warning, for the rest of
    the process); every other error propagates."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    candidates = resolve(device, op.removesuffix("_backward"))
    for i, name in enumerate(candidates):
        try:
            out = implementation(name)(*args)
        except BackendUnavailable as e:
            if requested() != "auto" or i == len(candidates) - 1:
                raise
            _off[(op.removesuffix("_backward"), name)] = str(e)
            warnings.warn(f"stafast: {op} cannot run on backend {name!r} ({e}); auto mode uses "
                          f"{candidates[i + 1]!r} for it for the rest of this process.", RuntimeWarning)
            continue
        _record(op, name)
        return out
    raise AssertionError("unreachable")


def _record(op: str, name: str) -> None:
    for ran in _recorders:
        seen = ran[op].split("+") if op in ran else []
        if name not in seen:
            ran[op] = "+".join(seen + [name])


@contextlib.contextmanager
def backends_ran():
    """Collect which backend actually ran each stafast op inside this block.

        with stafast.ops.backends_ran() as ran:
            model(clips).embedding.sum().backward()
        ran  # {"spatial_softmax_pool": "ext", "spatial_softmax_pool_backward": "ext", ...}

    Keys are the registered ops (the backward passes under their `_backward` names), values the
    backend; an op that ran on several (after a fallback) shows them joined by "+", in order.
    The reference that torch.compile traces inline (backend "reference" under compile) runs no
    stafast op, so it leaves no entry."""
    ran: dict[str, str] = {}
    _recorders.append(ran)
    try:
        yield ran
    finally:
        _recorders.remove(ran)
