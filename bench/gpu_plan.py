"""`bash bench/gpu_check.sh --plan`: for each stage, its steps, how many tests, benchmark cases and
compilations they are, and an estimate of its time on the H200 (how each figure is estimated is
printed beside it).

Counts are exact where they can be: tests and benchmark cases are collected by pytest as the GPU
machine would collect them (torch.cuda.is_available() answering True during collection), Triton
compilations are the distinct (kernel, specialisation, config) launches that the ops' launchers
make at the tests' and benchmarks' shapes, recorded on meta tensors (stafast.kernels.aot). Times
are estimates: per-unit costs below, each marked measured (where and how) or assumed.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from gpu_stage import PY, ROOT, SANITIZE_SELECT, STAGE_SECONDS, steps

# Per-unit costs on the GPU machine (16 cores, one H200), in seconds.
COST = {
    "start": (90, "assumed: the device notes say a minute or more to start a machine"),
    "triton_compile": (0.44, "measured here: median compile_s of bench/results/aot-triton3.6.json (2-core VM)"),
    "nvcc_build": (120, "measured here: the sm_80 + sm_90 build took 6.6 min of CPU (11 units: 5 .cpp, 3 .cu x 2 "
                        "archs, ~36 s each); for sm_90 on 16 jobs, the longest .cu (~2 x 36 s) + link, x1.5 margin"),
    "test": (0.15, "assumed: one op test on the GPU with its launches, outside compilation"),
    "inductor_op": (20, "assumed: inductor compiles one small reference graph (forward + backward) on a GPU"),
    "inductor_hit": (3, "assumed: dynamo traces again and inductor finds the graph in its cache"),
    "bench_case": (1.3, "from bench/harness.py: warm-up <= 0.5 s, do_bench 25 + 200 ms, 33 synced rounds"),
    "inductor_resnet": (90, "assumed: inductor compiles a ResNet-50 training step"),
    "step_ms": (45, "assumed: ResNet-50 bf16 channels_last, 192 frames of 256x128 (~3,000 224x224 images/s)"),
    "frames_per_s": (3000, "assumed: the torch DataLoader, 8 workers decoding 256x128 JPEGs"),
    "sanitize_tool": (40, "assumed: python + torch + CUDA start under compute-sanitizer"),
    "sanitize_test": (5, "assumed: one small op test under a sanitizer (Triton compiled by the first tool)"),
}
XDIST = 8  # the ops stage's pytest-xdist workers

def counts(collections: list[list[str]], compile_cases: list[list]) -> tuple[list[dict], list[int]]:
    """In one subprocess (one import of torch): the test ids per file that each `pytest args` would run
    on the GPU machine, and the distinct Triton compilations of each list of (op, shape, dtype)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "STAFAST_RESULTS")}
    env.update(STAFAST_TEST_DEVICE="cuda", PYTHONPATH=os.pathsep.join((ROOT, os.path.join(ROOT, "bench"))))
    job = json.dumps({"collections": collections, "compile_cases": compile_cases})
    done = subprocess.run([PY, os.path.abspath(__file__), "--counts"], cwd=ROOT, env=env, input=job,
                          capture_output=True, text=True)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise SystemExit(f"gpu_check --plan: counting failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}") from None
    return result["collections"], result["compilations"]


def _count_here(job: dict) -> dict:
    """The subprocess of counts(): collects as the GPU machine does (torch.cuda.is_available() True)."""
    import contextlib
    import io

    import torch
    torch.cuda.is_available = lambda: True
    import pytest

    class Ids:
        def __init__(self):
            self.ids = []

        def pytest_collection_finish(self, session):
            self.ids = [item.nodeid for item in session.items]

    collections = []
    for args in job["collections"]:
        # without xdist's -n N (not installed here) and the JSON that pytest-benchmark would open at once
        args = [a for i, a in enumerate(args) if a != "-n" and (i == 0 or args[i - 1] != "-n")
                and not a.startswith("--benchmark-json")]
        ids = Ids()
        with contextlib.redirect_stdout(io.StringIO()):
            pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args], plugins=[ids])
        per_file: dict[str, int] = {}
        for nodeid in ids.ids:
            per_file[nodeid.split("::")[0]] = per_file.get(nodeid.split("::")[0], 0) + 1
        collections.append(per_file)
    from stafast.kernels import aot
    compilations = []
    for cases in job["compile_cases"]:
        seen = set()
        for op, shape, dtype in cases:
            for stage, launch in aot.launches(dict(aot.DEFAULT_SHAPE, **shape), getattr(torch, dtype), 132):
                if stage.startswith(op):
                    seen.update(aot._identity(launch, c, "sm_90") for c in launch.configs or [None])
        compilations.append(len(seen))
    return {"collections": collections, "compilations": compilations}


def op_cases() -> tuple[list, list]:
    """(op, shape, dtype) at the op tests' shapes (tests/ops/cases.py) and at the benchmarks' (paper, large)."""
    sys.path.insert(0, ROOT)
    from tests.ops import cases as c
    tests = []
    for dtype in ("float32", "float64"):
        tests += [("spatial_softmax_pool", dict(B=m, N=1, K=k, L=l, D=d), dtype) for m, k, l, d in c.SSP_SHAPES]
        tests += [("diversity_penalty", dict(B=m, N=1, K=k, L=l), dtype) for m, k, l in c.DIV_SHAPES]
        tests += [("frame_attention", dict(B=b, N=n, K=k, D=d), dtype) for b, n, k, d in c.FA_SHAPES]
    for dtype in ("bfloat16", "float16"):  # the 16-bit tests' shapes
        tests += [("spatial_softmax_pool", dict(B=3, N=1, K=2, L=7, D=5), dtype),
                  ("diversity_penalty", dict(B=3, N=1, K=2, L=7), dtype),
                  ("frame_attention", dict(B=2, N=3, K=2, D=5), dtype)]
    bench = [(op, dict(B=b, N=n, K=k, L=l, D=2048), dtype) for op in ("spatial_softmax_pool", "diversity_penalty",
                                                                       "frame_attention")
             for b, n, k, l in ((32, 6, 6, 32), (64, 8, 8, 128)) for dtype in ("bfloat16", "float32")]
    return tests, bench


def plan_stage(stage: str, collected: dict, compiles_of: dict) -> tuple[list[str], float]:
    lines, total = [], 0.0
    for step in steps(stage, "$OUT", dry=False):
        per_file = collected.get(tuple(step.collect or ()), {})
        n = sum(per_file.values())
        command = shlex.join(step.argv).replace(ROOT + os.sep, "").replace(PY, "python3")
        what = f"  {step.name}: {command if len(command) < 150 else command[:146] + ' ...'}"
        est, how = 0.0, ""
        if stage == "ops" and step.name == "build":
            est, how = COST["nvcc_build"][0], "nvcc_build"
            what += " (3 .cu for sm_90 by nvcc, 5 .cpp by g++)"
        elif stage == "ops" and step.name == "tests":
            compiles = compiles_of["tests"]
            compile_tests = per_file.get("tests/ops/test_compile.py", 0)
            est = (n * COST["test"][0] + compiles * COST["triton_compile"][0] +
                   compile_tests * COST["inductor_op"][0]) / XDIST + 15
            how = (f"({n} x test + {compiles} x triton_compile + {compile_tests} x inductor_op) / {XDIST} xdist "
                   "workers + 15 s start")
            what += f"\n      {n} tests: " + ", ".join(f"{os.path.basename(k)} {v}" for k, v in per_file.items()) + \
                f"\n      ~{compiles} Triton compilations (autotune configs at the tests' shapes), " \
                f"{compile_tests} torch.compile tests; test_triton runs every config of its own shapes too"
        elif stage == "ops" and step.name == "compile_cache":
            est = -(-n // XDIST) * COST["inductor_op"][0] + 15
            how = f"ceil({n} cases / {XDIST} xdist workers) x inductor_op + 15 s start"
            what += f"\n      {n} torch.compile cases, run once each (--benchmark-disable) to fill inductor's caches"
        elif stage == "ops" and step.name == "benchmarks":
            compiles = compiles_of["benchmarks"]
            graphs = len(op_cases()[1])
            est = n * COST["bench_case"][0] + graphs * COST["inductor_hit"][0] + compiles * COST["triton_compile"][0]
            how = f"{n} x bench_case + {graphs} x inductor_hit + {compiles} x triton_compile"
            what += f"\n      {n} benchmark cases (-k '{step.argv[step.argv.index('-k') + 1]}'): " + \
                ", ".join(f"{os.path.basename(k)} {v}" for k, v in per_file.items()) + \
                f"\n      {graphs} inductor graphs (the compile column), ~{compiles} Triton compilations"
        elif stage == "ops":
            est, how = 10, "an import"
        elif stage == "model":
            # bench/throughput.py GPU settings: stages 3, 4 x eager / fused / compile; 10 warm-up + 3 x 50 steps
            steps_n = 6 * (10 + 3 * 50)
            frames = (7 * 16 * 32 * 6) * 2 + 4 * 1024 * 6  # data alone + end to end: 7 epochs of 16 batches; eval
            est = 2 * COST["inductor_resnet"][0] + steps_n * COST["step_ms"][0] / 1e3 + frames / \
                COST["frames_per_s"][0] + 25
            how = (f"2 x inductor_resnet + {steps_n} steps x step_ms + {frames} frames / frames_per_s + 25 s "
                   "for the JPEG set (~17,000 files under /tmp)")
            what += ("\n      training step alone: stages 3 and 4 x eager / fused / compile (2 inductor compiles of "
                     "ResNet-50), the torch pipeline alone and feeding stage 4, evaluation frames/s, peak memory")
        elif stage == "data":
            if step.name == "wheels":
                est, how = 40, "assumed: unzipping ~300 MB of wheels into .wheelhouse/site"
            elif step.name == "benchmarks":
                est, how = n * 20 + 30, f"{n} cases x 20 s (assumed: 3 epochs + start-up) + 30 s of synthetic videos"
                what += f"\n      {n} cases: " + ", ".join(f"{os.path.basename(k)} {v}" for k, v in per_file.items())
            elif step.name == "end_to_end":
                est, how = 90, "assumed: stage 4 fused step alone, DALI and torch alone, DALI feeding the step"
            else:
                est, how = 10, "an import"
        elif stage == "sanitize":
            est = COST["sanitize_tool"][0] + n * COST["sanitize_test"][0]
            how = f"sanitize_tool + {n} x sanitize_test"
            what += f"\n      {n} tests (-k '{SANITIZE_SELECT}')"
        total += est
        lines.append(f"{what}\n      ~{est:.0f} s = {how}")
    return lines, total


if __name__ == "__main__" and sys.argv[1:] == ["--counts"]:
    print(json.dumps(_count_here(json.loads(sys.stdin.read()))))


def print_plan(stages: list[str]) -> int:
    print("GPU check plan (one H200 lease: 15 minutes in all, at most 10 per command; estimates, see the legend)")
    collections = sorted({tuple(st.collect) for stage in stages for st in steps(stage, "$OUT", False) if st.collect})
    tests, bench = op_cases()
    found, compiled = counts([list(c) for c in collections], [tests, bench])
    collected = dict(zip(collections, found))
    compiles_of = dict(zip(("tests", "benchmarks"), compiled))
    totals = {}
    for stage in stages:
        lines, total = plan_stage(stage, collected, compiles_of)
        totals[stage] = total
        print(f"\nstage {stage} (budget {STAGE_SECONDS[stage]} s, cut short there): ~{total / 60:.1f} min")
        print("\n".join(lines))
    if {"ops", "model"} <= set(totals):
        both = COST["start"][0] + totals["ops"] + totals["model"]
        print(f"\nops + model in one lease: start ~{COST['start'][0]} s + {totals['ops']:.0f} s + "
              f"{totals['model']:.0f} s = ~{both / 60:.1f} min of device time (two calls, the second at once)")
    print("\nper-unit costs:")
    for name, (value, how) in COST.items():
        print(f"  {name} = {value}: {how}")
    over = [s for s, t in totals.items() if t > 8 * 60]
    if over:
        print(f"gpu_check --plan: stages {over} are estimated over 8 minutes")
    return int(bool(over))
