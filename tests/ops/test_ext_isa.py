"""The extension's CPU kernels built for narrower vector units than this machine's.

The kernels size their register tiles by instruction set (csrc/cpu/vec.h: 64-byte vectors with
AVX-512, 32 with AVX2, 16 otherwise) and `make install` builds for the host (-march=native), so
the rest of the suite tests one tile shape only. Here the CPU sources are also built for AVX2
and for baseline x86-64 (SSE2), and the ext cases of the op tests run against each build in a
fresh interpreter (the op namespace can be registered once per process).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")
OP_TESTS = [os.path.join(HERE, f"test_{op}.py") for op in ("spatial_softmax_pool", "diversity_penalty", "frame_attention")]

# Builds the CPU sources for one -march, registers them in place of stafast._C, runs pytest.
RUN = """
import glob, os, sys, types
from torch.utils import cpp_extension
csrc, march, build = sys.argv[1:4]
sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
cpp_extension.load(name="stafast_ext_" + march.replace("-", "_"), sources=sources, extra_include_paths=[csrc],
                   extra_cflags=["-O3", "-march=" + march, "-fno-math-errno", "-fopenmp"],
                   extra_ldflags=["-fopenmp"], build_directory=build, is_python_module=False)
sys.modules["stafast._C"] = types.ModuleType("stafast._C")  # its ops are the ones just registered
import pytest
sys.exit(pytest.main(sys.argv[4:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the -march values are x86-64 ones")
@pytest.mark.skipif(not os.path.isdir(os.path.join(CSRC, "cpu")), reason="no extension sources in this checkout")
@pytest.mark.parametrize("march", ["haswell", "x86-64"])
def test_ext_ops_built_for(march, tmp_path):
    if march == "haswell" and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("this CPU cannot run AVX2 code")
    cmd = [sys.executable, "-c", RUN, CSRC, march, str(tmp_path), "-q", "-p", "no:cacheprovider",
           "-k", "ext", *OP_TESTS]
    env = dict(os.environ, STAFAST_TEST_DEVICE="cpu")  # CPU sources only (also under bench/gpu_check.sh)
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"-march={march} build or its ext tests failed:\n{run.stdout[-6000:]}\n{run.stderr[-4000:]}"
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]
