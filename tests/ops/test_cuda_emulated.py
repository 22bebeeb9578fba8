"""The CUDA kernels of csrc/cuda, executed on the CPU.

The unchanged .cu sources (kernels and their host wrappers) are compiled for the host against the
emulation of tests/ops/cuda_emu (one fiber per CUDA thread, block barriers, warp shuffles over the
lanes their mask names, atomics, shared memory per block; barriers reached by part of a block,
divergent barriers, shuffles naming absent lanes and launches past the limits are reported with
their source line). Their ops are registered as torch.ops.stafast_emu.<op> on CPU tensors.

Every case runs twice, with the lowest-numbered CUDA thread first and with the highest first: the
two results must be bitwise equal (a missing barrier, a race or atomics adding in a varying order
make them differ) and match the float64 reference (stafast/ops/reference.py) within the dtype's
tolerance, forward and backward, at small odd shapes that leave partial tiles, warps and blocks,
in every dtype the kernels take. Negative controls (cuda_emu/controls.cpp) show that each defect
is reported.

The kernels run in a worker process, so a broken index that crashes or hangs fails its test instead
of the whole run. The build is cached in $STAFAST_CACHE/cuda-emu (default ~/.cache/stafast):
ninja recompiles what changed.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import multiprocessing
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EMU = os.path.join(HERE, "cuda_emu")
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
SCHEDULES = {"lowest thread first": 0, "highest thread first": 1}
DTYPES = ("float64", "float32", "float16", "bfloat16")  # STAFAST_DISPATCH's
CALL_SECONDS = 300  # a case that runs longer is stuck (a broken loop bound)

pytestmark = pytest.mark.skipif(not CUDA_SOURCES, reason="no csrc/cuda sources in this checkout")


def build() -> str:
    """Compiles the emulated kernels (once; ninja redoes what changed) and returns the library's path."""
    from torch.utils import cpp_extension
    key = hashlib.sha256(f"{ROOT} {torch.__version__} {sys.version}".encode()).hexdigest()[:12]
    folder = os.path.join(os.environ.get("STAFAST_CACHE", os.path.expanduser("~/.cache/stafast")), "cuda-emu", key)
    os.makedirs(folder, exist_ok=True)
    sources = [os.path.join(EMU, "cuda_emu.cpp"), os.path.join(EMU, "controls.cpp")]
    for cu in CUDA_SOURCES:  # each .cu as it is, after the emulation
        wrapper = os.path.join(folder, "emu_" + os.path.basename(cu).removesuffix(".cu") + ".cpp")
        text = f'#include "torch_prelude.h"\n#include "{cu}"\n'
        if not os.path.isfile(wrapper) or open(wrapper).read() != text:
            with open(wrapper, "w") as f:
                f.write(text)
        sources.append(wrapper)
    cpp_extension.load(name="stafast_cuda_emu", sources=sources, build_directory=folder, is_python_module=False,
                       extra_include_paths=[os.path.join(EMU, "include"), EMU, os.path.join(ROOT, "csrc")],
                       extra_cflags=["-O1", "-Wno-unknown-pragmas"])
    return os.path.join(folder, "stafast_cuda_emu.so")


# ---- in the worker process ----

_lib = None


def _serve(conn, library: str) -> None:
    global _lib
    torch.ops.load_library(library)
    _lib = ctypes.CDLL(library)
    _lib.cuda_emu_run_control.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_double), ctypes.c_double,
                                          ctypes.c_char_p, ctypes.c_int]
    while True:
        name, args = conn.recv()
        try:
            conn.send((True, globals()[name](*args)))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the test that asked
            conn.send((False, f"{type(e).__name__}: {e}"))


def _configure(schedule: int = 0, check_only: bool = False, grid_y_limit: int = 0) -> None:
    _lib.cuda_emu_configure(schedule, int(check_only), grid_y_limit, 0)


def _inputs(op: str, shape: tuple, dtype: torch.dtype, kind: str) -> tuple[tuple, tuple, dict]:
    """(forward inputs, upstream gradients, extra args) on the CPU, in `dtype`."""
    from .cases import attn_inputs, fa_inputs, ssp_inputs
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if op == "spatial_softmax_pool":
        m, k, l, d = shape
        inputs = ssp_inputs(shape, dtype)
        return inputs, (torch.randn(m, k, d).to(dtype), torch.randn(m, k, l).to(dtype)), {}
    if op == "diversity_penalty":
        return (attn_inputs(shape, dtype, zeros=True),), (torch.randn(shape[0], dtype=acc),), {"kind": kind}
    x, bias, scale = fa_inputs(shape, dtype)
    return (x, bias), (torch.randn(x.shape).to(dtype),), {"scale": scale}


def _outputs(ops, op: str, inputs: tuple, grads: tuple, extra: dict) -> list[torch.Tensor]:
    """Forward outputs, then the gradients of the inputs, from `ops` (stafast_emu or the reference)."""
    forward, backward = getattr(ops, op), getattr(ops, op + "_backward")
    out = forward(*inputs, *extra.values())
    back = backward(*grads, *inputs, *extra.values())
    return [*(out if isinstance(out, (tuple, list)) else (out,)), *(back if isinstance(back, (tuple, list)) else (back,))]


def check(op: str, shape: tuple, dtype_name: str, kind: str, seed: int, grid_y_limit: int = 0) -> None:
    """The op's forward and backward under both schedules: bitwise equal, and close to the fp64 reference."""
    from stafast.ops import reference
    from .cases import close
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(seed)
    inputs, grads, extra = _inputs(op, shape, dtype, kind)
    runs = {}
    for name, schedule in SCHEDULES.items():
        _configure(schedule, grid_y_limit=grid_y_limit)
        runs[name] = _outputs(torch.ops.stafast_emu, op, inputs, grads, extra)
    _configure()
    want = _outputs(reference, op, [t.double() for t in inputs], [g.double() for g in grads], extra)
    spec = _outputs(reference, op, inputs, grads, extra)  # the dtypes and shapes the op must return
    (first, a), (second, b) = runs.items()
    for i, (x, y, w, z) in enumerate(zip(a, b, want, spec)):
        what = f"{op}{shape} {dtype_name} {kind} output {i}"
        assert (x.dtype, x.shape) == (z.dtype, z.shape), f"{what}: {x.dtype} {tuple(x.shape)}, not {z.dtype} " \
                                                         f"{tuple(z.shape)}"
        if not torch.equal(x, y):
            diff = (x.double() - y.double()).abs().max().item()
            raise AssertionError(f"{what} changes with the order the threads run in ({first} vs {second}: up to "
                                 f"{diff:.3g}): a race, a missing __syncthreads or atomics adding in a varying order")
        close(x, w, dtype, f"{what} ({first})")


def call_emulated(op: str, args: tuple, check_only: bool = False, grid_y_limit: int = 0):
    """torch.ops.stafast_emu.<op>(*args); returns the outputs' dtypes and shapes."""
    _configure(check_only=check_only, grid_y_limit=grid_y_limit)
    try:
        out = getattr(torch.ops.stafast_emu, op)(*args)
    finally:
        _configure()
    return [(str(t.dtype), tuple(t.shape)) for t in (out if isinstance(out, (tuple, list)) else (out,))]


def mixed_dtypes(seed: int) -> None:
    """Inputs of two dtypes are computed in the spec's dtype, as the CPU twin and the reference do."""
    from stafast.ops import reference
    from .cases import close
    torch.manual_seed(seed)
    logits = torch.randn(3, 5, 37, dtype=torch.float64).to(torch.bfloat16)
    feats = torch.randn(3, 37, 150)  # float32
    pooled, attn = torch.ops.stafast_emu.spatial_softmax_pool(logits, feats)
    want_pooled, want_attn = reference.spatial_softmax_pool(logits, feats)  # in float32 (logits' compute dtype)
    assert pooled.dtype == torch.float32 and attn.dtype == torch.bfloat16
    close(pooled, want_pooled, torch.float32, "pooled of bfloat16 logits and float32 feats")
    grads = torch.randn(3, 5, 150), torch.randn(3, 5, 37).to(torch.bfloat16)
    got = torch.ops.stafast_emu.spatial_softmax_pool_backward(*grads, logits, feats)
    want = reference.spatial_softmax_pool_backward(*grads, logits, feats)
    close(got[1], want[1], torch.float32, "grad feats of bfloat16 logits and float32 feats")
    x = torch.randn(2, 5, 3, 40, dtype=torch.float64).to(torch.bfloat16)
    bias = torch.randn(5, 5)  # float32: added in float32, not rounded to bfloat16 first
    gx = torch.randn(2, 5, 3, 40)
    out = torch.ops.stafast_emu.frame_attention(x, bias, 0.7)
    close(out, reference.frame_attention(x.double(), bias.double(), 0.7), torch.bfloat16, "frame attention")
    got = torch.ops.stafast_emu.frame_attention_backward(gx, x, bias, 0.7)
    want = reference.frame_attention_backward(gx, x, bias, 0.7)
    close(got[0], want[0], torch.float32, "grad x of bfloat16 x and a float32 upstream gradient")


def emulated_ops() -> list[str]:
    return sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("stafast_emu::"))


def control(name: str, schedule: int) -> tuple[list[float], str]:
    """Runs a negative control; returns its first outputs and the emulator's report ('' for none)."""
    _configure(schedule)
    out = (ctypes.c_double * 64)()
    message = ctypes.create_string_buffer(4096)
    _lib.cuda_emu_run_control(name.encode(), out, 1.0, message, len(message))
    _configure()
    return list(out[:3]), message.value.decode()


# ---- in the test process ----

class Worker:
    """A spawned process with the emulated kernels loaded; restarted after a crash or a timeout."""

    def __init__(self, library: str):
        self.library, self.process = library, None

    def __call__(self, name: str, *args):
        if self.process is None or not self.process.is_alive():
            ctx = multiprocessing.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.process = ctx.Process(target=_serve, args=(child, self.library), daemon=True)
            self.process.start()
        self.conn.send((name, args))
        if not self.conn.poll(CALL_SECONDS):
            self.stop()
            pytest.fail(f"{name}{args} did not finish in {CALL_SECONDS} s (a kernel stuck in a loop?)")
        try:
            ok, value = self.conn.recv()
        except EOFError:
            self.process.join(5)
            code = self.process.exitcode
            self.process = None
            pytest.fail(f"{name}{args} crashed the worker process (exit code {code}; a negative one is the signal: "
                        "-11 an out-of-bounds access)")
        if not ok:
            raise AssertionError(value)
        return value

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None


@pytest.fixture(scope="module")
def emu():
    worker = Worker(build())
    yield worker
    worker.stop()


# (op, shape, kinds): odd sizes. spatial_softmax_pool (M, K, L, D): K = 9 is a full and a partial pass
# of 8 heads, L = 37 two full tiles of 16 cells and a partial one, D = 150 a full block of 128
# channels and a partial one (22 channels: a partial warp, three idle ones); D = 33 one lane of a
# second warp. diversity_penalty (M, K, L): K = 7 gives 49 (i, j) pairs, unevenly over 4 warps, L = 45
# two passes of the lanes. frame_attention (B, N, K, D): N = 7 gives 49 pairs, 13 blocks of 4, the
# last with 3 idle warps; D = 40 two passes of the lanes; D = 150 two blocks of channels.
CASES = [("spatial_softmax_pool", (2, 9, 37, 150), ""), ("spatial_softmax_pool", (3, 6, 32, 33), ""),
         ("spatial_softmax_pool", (1, 1, 1, 1), ""),
         ("diversity_penalty", (3, 7, 45), "hellinger"), ("diversity_penalty", (3, 7, 45), "l2"),
         ("diversity_penalty", (2, 1, 1), "hellinger"),
         ("frame_attention", (2, 7, 3, 40), ""), ("frame_attention", (1, 5, 2, 150), ""),
         ("frame_attention", (1, 1, 1, 1), "")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, shape, kind", CASES, ids=[f"{op}-{'x'.join(map(str, s))}{'-' + k if k else ''}"
                                                        for op, s, k in CASES])
def test_kernels_against_the_reference(emu, op, shape, kind, dtype, rng_seed):
    emu("check", op, shape, dtype, kind, rng_seed)


def test_every_cuda_source_is_emulated(emu):
    """Each csrc/cuda/<op>.cu registers <op> and its backward, and each op of stafast.ops has cases here."""
    from stafast.ops import OPS
    ops = {os.path.basename(s).removesuffix(".cu") for s in CUDA_SOURCES}
    assert emu("emulated_ops") == sorted(ops | {op + "_backward" for op in ops})
    assert {op for op, _, _ in CASES} == ops == set(OPS)


def test_frame_attention_pairs_beyond_the_grid_y_limit(emu, rng_seed):
    """gridDim.y stops at its limit and the pairs kernel strides over the rest: lowered to 3 here, the 13
    blocks of 4 pairs that N = 7 needs loop; at the real limit, N = 512 (65,536 blocks) launches."""
    emu("check", "frame_attention", (2, 7, 3, 40), "float32", "", rng_seed, 3)
    x, bias = torch.randn(1, 512, 1, 1), torch.randn(512, 512)
    assert emu("call_emulated", "frame_attention", (x, bias, 0.5), True) == [("torch.float32", (1, 512, 1, 1))]
    emu("call_emulated", "frame_attention_backward", (torch.randn(1, 512, 1, 1), x, bias, 0.5), True)


def test_mixed_dtypes_are_computed_as_the_spec_computes_them(emu, rng_seed):
    emu("mixed_dtypes", rng_seed)


# Bad input to the CUDA wrappers: the same messages as from the CPU twins (common.h), before any kernel runs.
BAD = [
    ("spatial_softmax_pool", lambda: (torch.randn(2, 3, 4), torch.randn(2, 5, 6)),
     r"feats must be \(M, L, D\) = \(2, 4, D\), got shape \[2, 5, 6\]"),
    ("spatial_softmax_pool", lambda: (torch.randn(2, 3, 4), torch.randn(3, 4, 6)),
     r"feats must be \(M, L, D\) = \(2, 4, D\), got shape \[3, 4, 6\]"),
    ("spatial_softmax_pool", lambda: (torch.randn(2, 3, 4), torch.randn(2, 4, 6, device="meta")),
     r"feats must be on logits's device cpu, got meta"),
    ("spatial_softmax_pool", lambda: (torch.randn(2, 3, 0), torch.randn(2, 0, 6)), r"logits must not be empty"),
    ("spatial_softmax_pool_backward", lambda: (torch.randn(2, 3, 5), torch.randn(2, 3, 4), torch.randn(2, 3, 4),
                                               torch.randn(2, 4, 6)),
     r"grad_pooled must be \(M, K, D\) = \(2, 3, 6\), got shape \[2, 3, 5\]"),
    ("spatial_softmax_pool_backward", lambda: (torch.randn(2, 3, 6), torch.randn(2, 4, 4), torch.randn(2, 3, 4),
                                               torch.randn(2, 4, 6)),
     r"grad_attn must be \(M, K, L\) = \(2, 3, 4\), got shape \[2, 4, 4\]"),
    ("diversity_penalty_backward", lambda: (torch.randn(3), torch.rand(2, 3, 4), "l2"),
     r"grad must be \(M\) = \(2\), got shape \[3\]"),
    ("diversity_penalty", lambda: (torch.rand(2, 3), "l2"), r"attn must have 3 dims"),
    ("frame_attention", lambda: (torch.randn(2, 3, 1, 4), torch.randn(3, 2), 1.0),
     r"bias must be \(N, N\) = \(3, 3\), got shape \[3, 2\]"),
    ("frame_attention_backward", lambda: (torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 4), torch.randn(3, 3), 1.0),
     r"grad must be \(B, N, K, D\) = \(2, 3, 1, 4\), got shape \[2, 3, 1, 5\]"),
    ("frame_attention", lambda: (torch.randn(2, 3, 1, 4), torch.randn(3, 3, device="meta"), 1.0),
     r"bias must be on x's device cpu, got meta"),
]


@pytest.mark.parametrize("op, make, match", BAD, ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(BAD)])
def test_bad_shapes_and_devices_are_refused(emu, op, make, match):
    with pytest.raises(AssertionError, match=match):
        emu("call_emulated", op, make())
    if "meta" in match:
        return  # the CPU twin never sees a meta tensor: the dispatcher sends such a call elsewhere
    pytest.importorskip("stafast._C")
    with pytest.raises(RuntimeError, match=match):
        getattr(torch.ops.stafast_ext, op)(*make())


# (control, what the emulator must report, in both schedules)
DEFECTS = [
    ("divergent_barrier", r"divergent __syncthreads: thread \d+ reaches the one at controls.cpp:\d+"),
    ("barrier_after_early_exit", r"__syncthreads at controls.cpp:\d+ is reached by part of the block"),
    ("barrier_in_a_loop_some_skip", r"__syncthreads at controls.cpp:\d+ is reached by part of the block"),
    ("partial_warp_shuffle", r"__shfl_down_sync at controls.cpp:\d+ with mask 0xffffffff: .*exited"),
    ("shuffle_against_barrier", r"__shfl_down_sync at controls.cpp:\d+|__syncthreads at controls.cpp:\d+"),
    ("mask_leaves_out_the_caller", r"with mask 0xffff: lane \d+ of warp 0 (calls it, but the mask leaves it out|"
                                   r"reads lane 16, which the mask does not name)"),
    ("reads_an_unnamed_lane", r"with mask 0xffff: lane 15 of warp 0 reads lane 16, which the mask does not name"),
    ("full_mask_in_a_partial_warp", r"names lanes 16-31 of warp 1, which do not exist \(the block has 48 threads\)"),
    ("grid_y_over_the_limit", r"gridDim = \(1, 65536, 1\).*gridDim.y must be at most 65535"),
    ("block_over_1024_threads", r"a block has at most 1024 threads, this one 1056"),
]


@pytest.mark.parametrize("name, report", DEFECTS, ids=[d[0] for d in DEFECTS])
@pytest.mark.parametrize("schedule", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_negative_controls_are_reported(emu, name, report, schedule):
    _, message = emu("control", name, schedule)
    assert message, f"{name}: not reported"
    assert __import__("re").search(report, message), message


def test_a_missing_barrier_changes_the_result_with_the_schedule(emu):
    """A block sum through shared memory: with its barrier, both schedules give the sum; without it,
    the thread that sums runs before the others wrote (lowest first), so the two results differ."""
    want = sum(1.0 + t for t in range(64))
    for schedule in SCHEDULES.values():
        assert emu("control", "block_sum", schedule) == ([want] * 3, "")
    (low, report_low), (high, report_high) = (emu("control", "block_sum_missing_barrier", s)
                                              for s in SCHEDULES.values())
    assert report_low == report_high == ""  # no barrier defect to name: the results show it
    assert low != high and want in (low[0], high[0]) and (low[0] != want or high[0] != want)


def test_atomics_add_every_thread_of_every_block(emu):
    """7 blocks of 64 threads add into two slots, the blocks on several OS threads at once."""
    for schedule in SCHEDULES.values():
        assert emu("control", "atomic_sums", schedule) == ([7 * 64.0, 7 * sum(range(64)) * 1.0, 0.0], "")
