"""Shared benchmark harness: shapes, implementations side by side, timing, records.

Implementations of an op, compared in one pytest-benchmark group per (op, mode, shape, dtype):
  eager    the reference (stafast/ops/reference.py) in plain PyTorch, autograd for backward
  compile  torch.compile of the same reference
  triton   the op through the Triton backend (GPU only: the CPU interpreter is for tests)
  ext      the op through the C++/CUDA extension (when built)
Modes: fwd (forward with autograd recording, as in training), bwd (backward of a recorded
forward), fwd+bwd.  On GPU every call is synchronised and triton.testing.do_bench's median
goes into extra_info; figures go to JSON with the device and versions (bench/report.py).
Every row records the backend that ran each stafast op (extra_info["backends_ran"], see
conftest.py) and the one it names (extra_info["backend"]); a row fails when they differ.
"""
from __future__ import annotations

import os
import platform
import time

import pytest
import torch
import torch._functorch.config

from stafast import ops
from stafast.ops import reference

# bwd mode replays one recorded forward (retain_graph=True), which compiled backwards with donated
# buffers refuse; donation only saves memory, so it is off for the benchmarks.
torch._functorch.config.donated_buffer = False

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Paper: B=32 clips x N=6 frames, 8x4 grid (L=32), ResNet-50 (D=2048), K=6 heads; and twice the clips.
SHAPES = {"paper": dict(B=32, N=6, L=32, D=2048, K=6), "large": dict(B=64, N=6, L=32, D=2048, K=6)}
if DEVICE == "cuda":  # the last-stride-1 grid (16x8) with more heads, only where memory and time allow
    SHAPES["large"] = dict(B=64, N=8, L=128, D=2048, K=8)
DTYPES = [torch.bfloat16, torch.float32] if DEVICE == "cuda" else [torch.float32]
MODES = ["fwd", "bwd", "fwd+bwd"]
IMPLS = ["eager", "compile", "triton", "ext"]


def skip_reason(impl: str) -> str | None:
    if impl in ("eager", "compile"):
        return None
    if impl == "triton" and DEVICE == "cpu":
        return "triton: no GPU here (the CPU interpreter is a test path, not a performance path)"
    if impl not in ops.available_backends(DEVICE):
        return f"{impl}: backend not available on {DEVICE}"
    return None


# The public diversity_penalty averages over frames by default; the reference returns the
# per-frame values, so the public op is asked for those too and every column times one function.
SAME_OUTPUT_AS_REFERENCE = {"diversity_penalty": {"reduction": "none"}}


def implementation(op: str, impl: str):
    """A callable with the op's signature for `impl`."""
    if impl == "eager":
        return getattr(reference, op)
    if impl == "compile":
        return torch.compile(getattr(reference, op), dynamic=False)
    fn = getattr(ops, op)
    kwargs = SAME_OUTPUT_AS_REFERENCE.get(op, {})

    def run(*args):
        with ops.backend(impl):
            return fn(*args, **kwargs)
    return run


def bench(benchmark, fn, inputs: tuple, mode: str, group: str, extra: dict):
    """Time `mode` of fn(*inputs); inputs that are float tensors get gradients. extra["impl"] says
    what runs (see check_backends)."""
    benchmark.group = group
    with ops.backends_ran() as ran:
        _time(benchmark, fn, inputs, mode, extra)
    benchmark.extra_info["backend"] = check_backends(extra["impl"], ran, group)


def check_backends(impl: str, ran: dict[str, str], group: str) -> str | None:
    """The backend that row `impl` names, after checking that it is what ran: a triton or ext row
    runs every stafast op on that backend; eager and compile time the reference (directly, traced
    inline or through the reference backend); a fused row (auto mode) one backend, not the
    reference; any other row (a copy) no stafast op (None)."""
    seen = {b for value in ran.values() for b in value.split("+")}  # "triton+ext": an op that fell back
    if impl in ("triton", "ext"):
        named, ok = impl, seen == {impl}
    elif impl == "fused":
        named = "+".join(sorted(seen)) or None
        ok = len(seen) == 1 and named != "reference"
    elif impl in ("eager", "compile"):
        named, ok = "reference", seen <= {"reference"}
    else:
        named, ok = None, not seen
    if not ok:
        pytest.fail(f"{group}: the {impl!r} row ran {ran or 'no stafast op'}, not what it names")
    return named


def _time(benchmark, fn, inputs: tuple, mode: str, extra: dict) -> None:
    diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def outputs():
        out = fn(*inputs)
        return out if isinstance(out, tuple) else (out,)

    ref_out = outputs()  # warm-up (and compilation) outside the timed region
    grads = [torch.randn_like(o) for o in ref_out]

    # Steps drop their results, as a training step does once they are used; returned, pytest-benchmark
    # would keep one call's outputs alive through the next, which then cannot reuse their memory.
    if mode == "fwd":
        def step():
            outputs()
    elif mode == "fwd+bwd":
        def step():
            torch.autograd.grad(outputs(), diff, grads)
    else:
        def step():
            torch.autograd.grad(ref_out, diff, grads, retain_graph=True)

    warm_up(step)
    benchmark.extra_info.update(extra)
    benchmark.extra_info.update(device=device_name(), torch=torch.__version__, triton=triton_version(), mode=mode)
    if DEVICE == "cuda":
        import triton.testing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        benchmark.extra_info["median_ms"] = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
        benchmark.extra_info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20

        def synced():
            step()
            torch.cuda.synchronize()
        benchmark.pedantic(synced, rounds=30, warmup_rounds=3, iterations=1)
    else:
        benchmark.pedantic(step, rounds=int(os.environ.get("STAFAST_BENCH_ROUNDS", 7)), warmup_rounds=1, iterations=1)


def warm_up(step, calls: int = 20, seconds: float = 0.5) -> None:
    """Run `step` until `calls` calls or `seconds` have passed (at least once), before timing.

    Training repeats the same step thousands of times, so the steady state is what is timed. On
    the 2-core VMs used here, a loop over the same 50 MB buffers (a plain copy_ included) takes about
    ten calls to settle at up to 2x faster than its first calls.
    """
    start = time.perf_counter()
    for _ in range(calls):
        step()
        if time.perf_counter() - start > seconds:
            break


def device_name() -> str:
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def params(op_shapes=SHAPES):
    """pytest parameters (impl, mode, shape name, dtype), with skips that say why."""
    out = []
    for impl in IMPLS:
        reason = skip_reason(impl)
        for mode in MODES:
            for shape in op_shapes:
                for dtype in DTYPES:
                    marks = [pytest.mark.skip(reason=reason)] if reason else []
                    out.append(pytest.param(impl, mode, shape, dtype, marks=marks,
                                            id=f"{impl}-{mode}-{shape}-{str(dtype).removeprefix('torch.')}"))
    return out


def group(op: str, mode: str, shape: str, dtype: torch.dtype) -> str:
    dims = ",".join(f"{k}={v}" for k, v in SHAPES[shape].items())
    return f"{op} {mode} {shape}({dims}) {str(dtype).removeprefix('torch.')}"
