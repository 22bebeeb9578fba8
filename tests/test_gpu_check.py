"""bench/gpu_check.sh's bookkeeping: which op tests run on the GPU, the device's rules for $OUT, the
backend check of benchmark rows. (The stages themselves run in `make test`'s dry run.)"""
import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_stage  # noqa: E402


def test_every_op_test_file_is_placed():
    """A new tests/ops file must be put in the GPU stage's list or the CPU-only one (test_aot,
    test_ext_isa, test_data_movement... must not run on the GPU's lease)."""
    files = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "ops", "test_*.py"))}
    gpu, cpu = set(gpu_stage.GPU_OP_TESTS), set(gpu_stage.CPU_ONLY_OP_TESTS)
    assert not gpu & cpu
    assert files <= gpu | cpu, f"place these in bench/gpu_stage.py: {sorted(files - gpu - cpu)}"
    assert gpu <= files, sorted(gpu - files)


@pytest.mark.parametrize("layout, problem", [
    ([f"f{i}.log" for i in range(8)], None),
    ([f"f{i}.log" for i in range(9)], "9 files, more than 8"),
    (["a/b/ok.json"], None),
    (["a/b/c/deep.json"], "more than 2 folders down"),
    (["bad name.txt"], "a name of letters, digits"),
])
def test_out_rules(tmp_path, layout, problem):
    for name in layout:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    problems = gpu_stage.check_out(str(tmp_path))
    assert (problem is None and not problems) or (problem and any(problem in p for p in problems)), problems


@pytest.mark.parametrize("extra, problem", [
    ({"impl": "triton", "op": "frame_attention", "backends_ran": {"frame_attention": "triton",
                                                                  "frame_attention_backward": "triton"}}, None),
    ({"impl": "ext", "op": "frame_attention", "backends_ran": {"frame_attention": "ext+reference"}}, "not ext"),
    ({"impl": "triton", "op": "frame_attention"}, "backends_ran not recorded"),
    ({"impl": "eager", "op": "frame_attention", "backends_ran": {}}, None),
    ({"impl": "compile", "op": "frame_attention", "backends_ran": {"frame_attention": "ext"}}, "not the reference"),
])
def test_benchmark_rows_name_the_backend_that_ran(extra, problem):
    found = gpu_stage.backend_problem(extra)
    assert (problem is None and found is None) or (problem and problem in found), found
