"""The GPU kernels as the GPU's compilers see them, checked without a GPU.

Triton: `python -m stafast.kernels.aot` compiles every kernel of the three ops with every autotune
config that survives pruning, for sm_80 and sm_90, bf16 and fp32, at the paper's shape, a 16 x 8
grid, a large one (K=16, L=1024, N=32, D=4096) and a tiny odd one; ptxas's report must show no
spill, shared memory within the arch's limit and a few seconds per config.
CUDA extension: the sm_80 and sm_90 code of the built stafast._C must use no stack (no spills)
and no more than the 48 KB of shared memory a block gets without opting in.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

SHAPES = ["K=6,L=32,N=6,D=2048", "K=6,L=128,N=6,D=2048", "K=16,L=1024,N=32,D=4096", "K=1,L=7,N=1,D=3"]
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}
SECONDS_PER_CONFIG = 10
# Every kernel of the three ops at these shapes (the frame attention's workspace kernels need N > 64).
KERNELS = {f"spatial_softmax_pool.{k}" for k in ("_forward_kernel", "_backward_kernel", "_softmax_backward_kernel")} | \
    {f"diversity_penalty.{k}" for k in ("_forward_kernel", "_backward_kernel")} | \
    {f"frame_attention.{k}" for k in ("_forward_kernel", "_backward_kernel")}


def _compiler_env(tmp) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the interpreter does not compile
    env["TRITON_CACHE_DIR"] = str(tmp / "triton-cache")
    return env


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aot")
    out = tmp / "aot.json"
    cmd = [sys.executable, "-m", "stafast.kernels.aot", "--arch", "sm_80,sm_90", "--dtype", "bf16,fp32",
           *[a for s in SHAPES for a in ("--shape", s)], "--json", str(out), "--jobs", "2"]
    done = subprocess.run(cmd, env=_compiler_env(tmp), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(done.stdout.splitlines()[-1])
    return json.load(open(out))


def test_every_kernel_compiles_for_every_arch_dtype_and_shape(rows):
    # With one D split and one L tile (the tiny shape) the pooling backward is a single kernel.
    fused = "spatial_softmax_pool._softmax_backward_kernel"
    for arch in SHARED_LIMIT:
        for dtype in ("bf16", "fp32"):
            ours = [r for r in rows if (r["arch"], r["dtype"]) == (arch, dtype)]
            assert KERNELS <= {r["kernel"] for r in ours}, (arch, dtype)
            for shape in SHAPES:
                seen = {r["kernel"] for r in ours if r["shape"].startswith(shape)}
                assert KERNELS - {fused} <= seen, (arch, dtype, shape, KERNELS - seen)
    assert {"K", "L", "N", "D", "B"} <= set(dict(kv.split("=") for kv in rows[0]["shape"].split(",")))
    assert all(set(r) >= {"kernel", "config", "arch", "dtype", "shape", "registers", "spill_bytes", "shared_bytes",
                          "compile_s"} for r in rows)


def test_no_config_spills(rows):
    spilled = [(r["kernel"], r["config"], r["arch"], r["dtype"], r["shape"], r["spill_bytes"]) for r in rows
               if r["spill_bytes"]]
    assert not spilled


def test_shared_memory_within_the_arch_limit(rows):
    over = [(r["kernel"], r["config"], r["arch"], r["shared_bytes"]) for r in rows
            if r["shared_bytes"] > SHARED_LIMIT[r["arch"]]]
    assert not over


def test_compile_seconds_per_config(rows):
    slow = [(r["kernel"], r["config"], r["arch"], r["dtype"], r["compile_s"]) for r in rows
            if r["compile_s"] > SECONDS_PER_CONFIG]
    assert not slow


@pytest.mark.parametrize("args, message", [
    (["--shape", "K=0"], "positive int"), (["--shape", "Q=3"], "KEY=positive int with KEY in"),
    (["--arch", "sm_75"], "--arch: unknown ['sm_75']"), (["--dtype", "int8"], "--dtype: unknown ['int8']"),
])
def test_bad_arguments_are_named(args, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "stafast.kernels.aot", *args], env=_compiler_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_refuses_to_run_under_the_interpreter(tmp_path):
    env = {**_compiler_env(tmp_path), "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "stafast.kernels.aot"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "interpreter does not compile" in done.stderr


def _cuobjdump() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def test_extension_cuda_kernels_use_no_stack_and_at_most_48_kb_of_shared_memory():
    try:
        import stafast._C  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the extension is not built: {e}")
    if not torch.ops.stafast_ext.has_cuda():
        pytest.skip("the extension was built without CUDA (no nvcc when it was built)")
    import stafast._C as ext
    out = subprocess.run([_cuobjdump(), "--dump-resource-usage", ext.__file__], capture_output=True, text=True,
                         check=True).stdout
    assert {"sm_80", "sm_90"} <= set(re.findall(r"arch = (sm_\d+)", out)), out[:2000]
    functions = [(name, int(stack), int(shared), int(local)) for name, stack, shared, local in
                 re.findall(r"Function (\S+):\s+REG:\d+ STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)]
    assert len(functions) >= 2 * 30, out[:2000]  # per arch: 34 (9 kernels, most in 4 dtypes)
    bad = [f for f in functions if f[1] or f[3] or f[2] > 48 * 1024]
    assert not bad, bad
