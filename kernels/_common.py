"""What the three ops' Triton kernels share: how they are launched, tile sizes, dtypes, tl.dot.

Every launch goes through `launch()`, which does one of three things:
- on a GPU: `kernel[grid](...)`; an autotuned kernel prunes its configs first (none that would
  spill or overflow shared memory is compiled) and times the rest once per key (K, L, D, N,
  dtype: never the number of frames or clips, so a new batch size does not re-tune);
- under TRITON_INTERPRET=1 (CPU tests): the first config that survives pruning, since the
  interpreter cannot time configs (tests/ops/test_triton.py runs the others one by one);
- inside `record()`: the launch (kernel, grid, arguments, surviving configs) is handed to a
  callback, and does not run (or runs after it, with run=True). stafast.kernels.aot uses this to
  compile every launch of an op for a GPU that this machine does not have, from the launchers' own
  code on meta tensors; bench/data_movement.py to count each launch's bytes.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import triton
import triton.language as tl

# Read when the kernels are imported: triton.jit itself decides interpreter or compiler then.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("0", "")

# Registers per thread that a config may need, as its kernel's RegisterModel estimates it. ptxas
# caps a thread at 255; the margin absorbs the models' error (checked by stafast.kernels.aot).
REGISTER_BUDGET = 160
# Shared memory a block may use: sm_80 has 163 KB and sm_90 227 KB per block (opt-in above 48 KB,
# which Triton does itself); the smaller one keeps every config valid on both.
SHARED_BUDGET = 160 * 1024
# Software-pipelining depth of the loads in the kernels' loops. With 2, ptxas for sm_90 gave small
# spills (8-16 B at 48-80 registers) in fp32 kernels that 1 and 3 compile without.
NUM_STAGES = 3
# Every kernel is compiled with `.maxnreg 255`. Without it ptxas (CUDA 13) picks a register count
# for occupancy by itself and spilled 8-64 B in kernels at 64-128 registers (sm_80 and sm_90); with
# it those compile without spills at a few more registers.
MAXNREG = 255


def options(warps: int) -> dict:
    """Launch options of a kernel that is not autotuned (the autotuned ones carry them in configs)."""
    return dict(num_warps=warps, num_stages=NUM_STAGES, maxnreg=MAXNREG)


def config(warps: int, **constexprs) -> triton.Config:
    """An autotune config with the options every kernel here is compiled with."""
    return triton.Config(constexprs, num_warps=warps, num_stages=NUM_STAGES, maxnreg=MAXNREG)


@dataclass
class Launch:
    """One kernel launch as a launcher would make it (what `record()` hands over)."""
    kernel: object                       # triton JITFunction or Autotuner
    grid: tuple | Callable
    args: tuple
    meta: dict                           # constexprs passed by the launcher
    configs: list = field(default_factory=list)  # autotune configs that survive pruning ([] if none)

    @property
    def jit_fn(self):
        """The triton.jit function under the autotuner and heuristics."""
        fn = self.kernel
        while isinstance(fn, (triton.runtime.Autotuner, triton.runtime.Heuristics)):
            fn = fn.fn
        return fn

    def constexprs(self, config=None) -> dict:
        """The launch's constexprs with `config`'s and the heuristics' values, as a launch sets them."""
        kwargs = {**self.meta, **(config.kwargs if config is not None else {})}
        fn = self.kernel.fn if isinstance(self.kernel, triton.runtime.Autotuner) else self.kernel
        if isinstance(fn, triton.runtime.Heuristics):
            named = {**dict(zip(fn.arg_names, self.args)), **kwargs}
            kwargs.update({name: rule(named) for name, rule in fn.values.items()})
        return kwargs

    @property
    def name(self) -> str:
        """op.kernel, e.g. spatial_softmax_pool._forward_kernel"""
        fn = self.jit_fn.fn  # the Python function (the interpreter's wrapper has another __module__)
        return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


_recorder: contextvars.ContextVar[Callable[[Launch], None] | None] = contextvars.ContextVar("stafast_record",
                                                                                              default=None)
_num_sms: contextvars.ContextVar[int | None] = contextvars.ContextVar("stafast_num_sms", default=None)
_run: contextvars.ContextVar[bool] = contextvars.ContextVar("stafast_record_run", default=False)


@contextlib.contextmanager
def record(callback: Callable[[Launch], None], num_sms: int, run: bool = False):
    """Inside this block launches are handed to `callback` instead of running (or just before they
    run, with run=True), and the launchers size their grids for a GPU with `num_sms` multiprocessors."""
    token, sms, runs = _recorder.set(callback), _num_sms.set(num_sms), _run.set(run)
    try:
        yield
    finally:
        _recorder.reset(token)
        _num_sms.reset(sms)
        _run.reset(runs)


def num_sms(t: torch.Tensor) -> int:
    """Streaming multiprocessors of t's GPU (the grid sizes depend on it); 132 (H100) elsewhere."""
    recorded = _num_sms.get()
    if recorded is not None:
        return recorded
    if t.is_cuda:
        return torch.cuda.get_device_properties(t.device).multi_processor_count
    return 132


def keep_configs(configs: list, d: int, demand: Callable) -> list:
    """The configs whose `demand(config)` (estimated registers, shared bytes) fit the budgets,
    leaving out D tiles wider than D needs (they only add masked lanes) unless no narrower one
    exists. If none fits, the least demanding one: a slow kernel beats none."""
    narrowest = min(c.kwargs["BLOCK_D"] for c in configs)
    widest = max(narrowest, triton.next_power_of_2(d))
    candidates = [c for c in configs if c.kwargs["BLOCK_D"] <= widest]
    demands = {c: demand(c) for c in candidates}
    keep = [c for c in candidates if demands[c][0] <= REGISTER_BUDGET and demands[c][1] <= SHARED_BUDGET]
    return keep or [min(candidates, key=lambda c: demands[c])]


def surviving_configs(kernel, args: tuple, meta: dict) -> list:
    """The autotune configs of `kernel` that its early pruning keeps for these arguments."""
    if not isinstance(kernel, triton.runtime.Autotuner):
        return []
    prune = kernel.early_config_prune
    return prune(kernel.configs, dict(zip(kernel.arg_names, args)), **meta) if prune else kernel.configs


class CompileError(RuntimeError):
    """A kernel did not compile for this GPU, or its binary does not fit it (see compile_failed)."""


def compile_failed(e: BaseException) -> bool:
    """Whether `e` says that Triton could not compile a kernel or load its binary: a front-end error,
    ptxas failing, more shared memory or threads than the GPU has, or any error raised inside
    triton.compile (an MLIR pass failing raises a plain RuntimeError there). Errors of the launch
    itself (out of memory, an illegal address, wrong arguments) are not."""
    from triton.compiler import compiler
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError
    if isinstance(e, (CompilationError, PTXASError, OutOfResources)):
        return True
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is compiler.compile.__code__:
            return True
        tb = tb.tb_next
    return False


def launch(kernel, grid, *args, **meta) -> None:
    """Launch `kernel` (a triton.jit function or an autotuned one) on `grid` (see the module doc);
    a kernel that does not compile raises CompileError."""
    recorder = _recorder.get()
    if recorder is not None:
        recorder(Launch(kernel, grid, args, meta, surviving_configs(kernel, args, meta)))
        if not _run.get():
            return
    try:
        _launch(kernel, grid, args, meta)
    except Exception as e:
        if compile_failed(e):
            raise CompileError(f"{Launch(kernel, grid, args, meta).name}: {type(e).__name__}: {e}") from e
        raise


def _launch(kernel, grid, args: tuple, meta: dict) -> None:
    if INTERPRET and isinstance(kernel, triton.runtime.Autotuner):
        c = surviving_configs(kernel, args, meta)[0]
        kw = {**meta, **c.kwargs}
        kernel.fn[grid(kw) if callable(grid) else grid](*args, **kw, num_warps=c.num_warps, num_stages=c.num_stages)
        return
    if INTERPRET:
        meta = {k: v for k, v in meta.items() if k != "maxnreg"}  # a compiler option the interpreter lacks
    kernel[grid](*args, **meta)


def even_d(args: dict) -> bool:
    """triton.heuristics rule: D is a whole number of BLOCK_D tiles (no partial last tile)."""
    return args["D"] % args["BLOCK_D"] == 0


def tile(n: int, lo: int = 16, hi: int | None = None) -> int:
    """Power-of-two tile covering n, at least `lo` (tl.dot needs 16 per dimension), at most `hi`."""
    b = max(lo, triton.next_power_of_2(n))
    return min(b, hi) if hi is not None else b


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_fp64(t: torch.Tensor) -> bool:
    return t.dtype == torch.float64


def device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@dataclass(frozen=True)
class RegisterModel:
    """Registers per thread of a kernel: base + sum_i per_element[i] * (elements of tile i per thread).

    The tiles are the kernel's (rows x columns) working tiles; the coefficients are least-squares
    fits to what ptxas reported for the kernel over a grid of tile sizes and warps (sm_90, triton
    3.8, via stafast.kernels.aot). A tile element costs several registers: its fp32 value, the
    exp and scaling around it, the copies tl.dot makes of its operands. For fp64 every value
    takes two registers."""
    base: float
    per_element: tuple[float, ...]

    def __call__(self, tiles: tuple[int, ...], warps: int, fp64: bool = False) -> float:
        per_thread = sum(c * t for c, t in zip(self.per_element, tiles)) / (32 * warps)
        return self.base + per_thread * (2 if fp64 else 1)


@triton.jit
def upcast(x, FP64: tl.constexpr):
    """Compute dtype: float64 for float64 inputs, float32 for everything else."""
    if FP64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def mma(a, b, acc, FP64: tl.constexpr):
    """acc + a @ b. 16-bit operands run on tensor cores with float32 accumulation; float32 is
    computed in IEEE float32 (not TF32, whose 10-bit mantissa would break the fp32 tolerances);
    float64 stays float64."""
    if FP64:
        out = tl.dot(a, b, acc, out_dtype=tl.float64)
    else:
        out = tl.dot(a, b, acc, input_precision="ieee")
    return out
