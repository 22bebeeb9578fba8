"""The GPU check's stages: what each runs, its plan, its run and its table (bench/gpu_check.sh calls this).

    bash bench/gpu_check.sh --plan                     # every stage: steps, counts, H200 time estimate
    bash bench/gpu_check.sh --stage ops [OUT]           # on the GPU machine, one call per stage
    bash bench/gpu_check.sh --dry-run [--stage S] [OUT] # every (or one) stage on the CPU at toy sizes

A stage is a list of steps (commands). It writes as it goes, into OUT (default $OUT, else
bench/results/gpu): STAGE.log (everything printed), STAGE.jsonl (an environment record, then a
record per step, test and benchmark as each finishes: bench/gpu_results.py), the step's own files,
and at the end STAGE.md, the one-screen table of goal / measured / reached. A step that would pass
the stage's time budget is cut short (SIGINT, then SIGKILL) and the table is still written, so a
stage never runs into the device's 10-minute limit and always returns what it finished. At most
MAX_FILES files per stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from gpu_results import append  # noqa: E402

PY = os.environ.get("PY", sys.executable)
STAGE_SECONDS = {"ops": 450, "model": 420, "data": 420, "sanitize": 450}  # under 8 minutes each
DRY_STAGE_SECONDS = 900
MAX_FILES, MAX_FILE_BYTES, MAX_TOTAL_BYTES = 8, 16 * 2**20, 64 * 2**20
NAME = re.compile(r"^[A-Za-z0-9._-]+$")

# The op tests that need CUDA, and the ones that never run there: every tests/ops/test_*.py is in
# one list (test_every_op_test_file_is_placed checks it), so a new file has to be placed.
GPU_OP_TESTS = ["tests/ops/test_spatial_softmax_pool.py", "tests/ops/test_diversity_penalty.py",
                "tests/ops/test_frame_attention.py", "tests/ops/test_triton.py", "tests/ops/test_compile.py",
                "tests/ops/test_cuda.py"]
CPU_ONLY_OP_TESTS = ["tests/ops/test_aot.py", "tests/ops/test_ext_isa.py", "tests/ops/test_data_movement.py",
                     "tests/ops/test_cuda_emulated.py", "tests/ops/test_ext_outputs.py", "tests/ops/test_backend.py",
                     "tests/ops/test_registration.py"]
OP_BENCH = ["bench/test_copy.py", "bench/test_spatial_softmax_pool.py", "bench/test_diversity_penalty.py",
            "bench/test_frame_attention.py"]
# The goals' benchmarks: fwd+bwd of the three ops, the pooling forward (its bandwidth), the copy.
OP_BENCH_SELECT = "copy or fwd+bwd or (spatial_softmax_pool and (fwd-paper or fwd-large))"
SANITIZE_TESTS = ["tests/ops/test_spatial_softmax_pool.py", "tests/ops/test_diversity_penalty.py",
                  "tests/ops/test_frame_attention.py"]
SANITIZE_SELECT = "test_values_and_grads and dtype0 and (shape3 or shape6) and not reference"
SANITIZERS = ("memcheck", "racecheck", "synccheck")


@dataclasses.dataclass
class Step:
    name: str
    argv: list[str]
    env: dict = dataclasses.field(default_factory=dict)
    seconds: int = 600           # its own limit (the stage's budget cuts it shorter)
    collect: list[str] | None = None  # pytest arguments whose tests --plan counts
    required: bool = False       # the stage's later steps are pointless without it: they are skipped


def pytest(*args: str) -> list[str]:
    return [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "gpu_results", "-rfE", *args]


def steps(stage: str, out: str, dry: bool) -> list[Step]:
    """The steps of `stage`; dry: the CPU, toy sizes (figures meaningless)."""
    dev = "cpu" if dry else "cuda"
    if stage == "ops":
        if dry:  # make install built the extension; check that the build would start
            build = Step("build", [PY, "-m", "pip", "install", "-q", "--dry-run", "--no-build-isolation", "--no-deps",
                                   "--no-index", "-e", "."], seconds=120)
        else:
            build = Step("build", [PY, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--no-index",
                                   "-e", "."], {"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16"}, seconds=300)
        tests = pytest(*GPU_OP_TESTS, *(["-k", "known_values or rows_are_the_contributions or reductions or "
                                          "deterministic"] if dry else ["-n", "8"]))
        bench = pytest(*OP_BENCH, "--benchmark-only", f"--benchmark-json={out}/ops-bench.json",
                       "--benchmark-columns=median,min,rounds", "-k",
                       "copy or (fwd+bwd-paper-float32 and not compile)" if dry else OP_BENCH_SELECT)
        # torch.compile's column compiles one graph per op, shape and dtype: 8 processes compile them at
        # once into inductor's caches first, so the timed run (one process) finds them there.
        warm = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *OP_BENCH, "--benchmark-disable", "-k",
                f"compile and ({OP_BENCH_SELECT})", *([] if dry else ["-n", "8"])]
        # the dry run leaves out the checks that only a GPU machine can fail (one import of torch each)
        return [build,
                *([] if dry else [Step("backends", [PY, os.path.join(HERE, "gpu_stage.py"), "backends", dev],
                                       seconds=120)]),
                Step("tests", tests, {"STAFAST_TEST_DEVICE": dev}, seconds=420, collect=tests[tests.index("-rfE") + 1:]),
                *([] if dry else [Step("compile_cache", warm, seconds=180, collect=warm[4:-2])]),
                Step("benchmarks", bench, {"STAFAST_BENCH_ROUNDS": "1"} if dry else {}, seconds=420,
                     collect=bench[bench.index("-rfE") + 1:])]
    if stage == "model":
        argv = [PY, "bench/throughput.py", "--out", out, "--pipelines", "torch", "--jsonl", f"{out}/model.jsonl"]
        return [Step("throughput", argv + (["--dry-run"] if dry else []), seconds=450)]
    if stage == "data":
        first = [] if dry else [Step("wheels", ["bash", "scripts/gpu_wheels.sh", "install"], seconds=120, required=True)]
        bench = pytest("bench/test_data.py", "--benchmark-only", f"--benchmark-json={out}/data-bench.json",
                       *(["-k", "not mjpeg and not h264"] if dry else []))
        throughput = [PY, "bench/throughput.py", "--out", out, "--sections", "step", "data", "end_to_end",
                      "--stages", "4", "--variants", "fused", "--jsonl", f"{out}/data.jsonl",
                      *(["--dry-run", "--pipelines", "dali", "--workers", "1"] if dry else [])]
        return first + [*([] if dry else [Step("dali", [PY, os.path.join(HERE, "gpu_stage.py"), "dali", dev],
                                               seconds=120, required=True)]),
                        Step("benchmarks", bench, {"STAFAST_BENCH_ROUNDS": "1"} if dry else {}, seconds=300,
                             collect=bench[bench.index("-rfE") + 1:]),
                        Step("end_to_end", throughput, seconds=300)]
    if stage == "sanitize":
        tests = pytest(*SANITIZE_TESTS, "-k", SANITIZE_SELECT)
        env = {"STAFAST_TEST_DEVICE": dev, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # every allocation its own
        if dry:  # no compute-sanitizer here: the selection, and its ext tests (the interpreter is slow)
            return [Step("memcheck", pytest(*SANITIZE_TESTS, "-k", f"({SANITIZE_SELECT}) and ext"), env, seconds=200)]
        return [Step(tool, ["compute-sanitizer", "--tool", tool, "--error-exitcode", "99", "--print-limit", "20",
                            *tests], env, seconds=200, collect=tests[tests.index("-rfE") + 1:]) for tool in SANITIZERS]
    raise SystemExit(f"gpu_check: unknown stage {stage!r}; expected one of {list(STAGE_SECONDS)}")


# ---- running a stage ----

def run_step(step: Step, seconds: float, log) -> tuple[int, float]:
    """Runs the step, its output to the terminal and the log; SIGINT at `seconds`, SIGKILL 20 s later."""
    wheels = os.path.join(ROOT, ".wheelhouse", "site")  # scripts/gpu_wheels.sh install puts DALI and PyAV there
    paths = (ROOT, HERE, wheels if os.path.isdir(wheels) else None, os.environ.get("PYTHONPATH"))
    env = {**os.environ, **step.env, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    line = f"\n=== {step.name}: {shlex.join(step.argv)}  (limit {seconds:.0f} s)\n"
    sys.stdout.write(line)
    log.write(line)
    start = time.perf_counter()
    proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)

    def copy_output():
        for text in proc.stdout:
            sys.stdout.write(text)
            log.write(text)
            log.flush()
    reader = threading.Thread(target=copy_output, daemon=True)
    reader.start()
    interrupted = False
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        interrupted = True
        os.killpg(proc.pid, signal.SIGINT)  # pytest ends its session and reports what ran
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    rc = proc.returncode
    if interrupted:
        note = f"=== {step.name}: stopped at its {seconds:.0f} s limit\n"
        sys.stdout.write(note)
        log.write(note)
        rc = rc or 124
    return rc, time.perf_counter() - start


def environment(stage: str, dry: bool) -> dict:
    import platform
    import torch
    env = {"kind": "environment", "stage": stage, "dry_run": dry, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"}
    for name in ("triton", "numpy"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    env["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or None
    return env


def run_stage(stage: str, out: str, dry: bool) -> int:
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, f"{stage}.jsonl")
    os.environ["STAFAST_RESULTS"] = results
    budget = DRY_STAGE_SECONDS if dry else STAGE_SECONDS[stage]
    start = time.perf_counter()
    append(environment(stage, dry))
    failed = []
    with open(os.path.join(out, f"{stage}.log"), "a") as log:
        gate = None  # a required step that failed
        for step in steps(stage, out, dry):
            left = budget - (time.perf_counter() - start)
            if left < 15 or gate:
                why = f"skipped: {gate} failed" if gate else "skipped: no time left in the stage's budget"
                print(f"=== {step.name}: {why}")
                append({"kind": "step", "name": step.name, "rc": None, "seconds": 0, "note": why})
                failed.append(step.name)
                continue
            rc, seconds = run_step(step, min(step.seconds, left), log)
            append({"kind": "step", "name": step.name, "rc": rc, "seconds": round(seconds, 1)})
            if rc:
                failed.append(step.name)
                gate = step.name if step.required else None
        text, bad_rows = table(stage, out)
        log.write(text + "\n")
    with open(os.path.join(out, f"{stage}.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    problems = check_out(out)
    for p in problems:
        print(f"gpu_check: {out}: {p}")
    print(f"gpu_check: stage {stage}: {time.perf_counter() - start:.0f} s; failed steps {failed or 'none'}; "
          f"rows failed {bad_rows}")
    return int(bool(failed or problems or bad_rows))


def check_out(out: str) -> list[str]:
    """The device's rules for what comes back from $OUT."""
    problems, files, total = [], 0, 0
    for folder, dirs, names in os.walk(out):
        depth = os.path.relpath(folder, out).count(os.sep) + (folder != out)
        for name in dirs + names:
            if not NAME.match(name):
                problems.append(f"{os.path.join(folder, name)}: a name of letters, digits, '.', '_', '-' only")
        for name in names:
            path = os.path.join(folder, name)
            files += 1
            size = os.path.getsize(path)
            total += size
            if depth > 2:
                problems.append(f"{path}: more than 2 folders down")
            if size > MAX_FILE_BYTES:
                problems.append(f"{path}: {size} bytes, over 16 MiB")
    if files > MAX_FILES:
        problems.append(f"{files} files, more than {MAX_FILES}")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{total} bytes in all, over 64 MiB")
    return problems


# ---- the tables: goal / measured / reached ----

def records(out: str, stage: str) -> list[dict]:
    path = os.path.join(out, f"{stage}.jsonl")
    if not os.path.isfile(path):
        return []
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off by a kill
            pass
    return rows


def backend_problem(extra: dict) -> str | None:
    """None if the row names the backend that ran, as the implementation it times says; else why not."""
    impl, op, ran = extra.get("impl"), extra.get("op"), extra.get("backends_ran")
    if impl in ("triton", "ext"):
        if not ran:
            return "backends_ran not recorded"
        other = {k: v for k, v in ran.items() if v != impl}
        return f"ran {other}, not {impl}" if other else None
    if impl in ("eager", "compile") and ran and any(v != "reference" for v in ran.values()):
        return f"ran {ran}, not the reference"
    return None


def test_rows(recs: list[dict], what: str, where: str = "") -> list[tuple]:
    tests = [r for r in recs if r.get("kind") == "test" and where in r["id"]]
    count = {o: sum(r["outcome"] == o for r in tests) for o in ("passed", "failed", "error", "skipped")}
    measured = ", ".join(f"{n} {o}" for o, n in count.items() if n) or "none ran"
    ok = bool(tests) and not count["failed"] and not count["error"]
    return [(what, "all pass", measured, ok, True)]


def step_rows(recs: list[dict]) -> list[tuple]:
    return [(f"step {r['name']}", "exit 0", r.get("note") or f"rc {r['rc']} in {r['seconds']} s", r["rc"] == 0, True)
            for r in recs if r.get("kind") == "step"]


# (op, goal vs eager, goal vs torch.compile): the speed goals, bf16 fwd+bwd at the paper shape
SPEED_GOALS = [("spatial_softmax_pool", 2.0, 1.3), ("diversity_penalty", 5.0, 2.0), ("frame_attention", 3.0, 1.5)]
BANDWIDTH_GOAL = 0.8  # pooling forward: its minimum bytes / time, against the copy in the same run


def ops_rows(recs: list[dict]) -> list[tuple]:
    benches = [r for r in recs if r.get("kind") == "benchmark"]
    rows = []
    bad = [(r["id"].split("::")[-1], backend_problem(r["extra_info"])) for r in benches
           if backend_problem(r["extra_info"])]
    rows.append(("every row names the backend that ran", "as named", f"{len(benches) - len(bad)}/{len(benches)} rows"
                 + (f"; {bad[0][0]}: {bad[0][1]}" if bad else ""), not bad and bool(benches), True))
    by = {}
    for r in benches:
        e = r["extra_info"]
        by[(e.get("op"), e.get("mode"), json.dumps(e.get("shape"), sort_keys=True), e.get("dtype"), e.get("impl"))] = r
    copy = next((r for r in benches if r["extra_info"].get("op") == "copy"), None)
    copy_bw = copy["extra_info"]["bytes"] / copy["median_s"] if copy else None
    dtypes = sorted({r["extra_info"].get("dtype") for r in benches if r["extra_info"].get("op") not in (None, "copy")})
    dtype = "torch.bfloat16" if "torch.bfloat16" in dtypes else (dtypes[0] if dtypes else None)
    for op, vs_eager, vs_compile in SPEED_GOALS:
        for key, r in by.items():
            if key[0] != op or key[1] != "fwd+bwd" or key[3] != dtype or key[4] not in ("triton", "ext"):
                continue
            eager, comp = by.get(key[:4] + ("eager",)), by.get(key[:4] + ("compile",))
            if not (eager and comp):
                continue
            a, b = eager["median_s"] / r["median_s"], comp["median_s"] / r["median_s"]
            shape = "paper" if '"B": 32' in key[2] else "large"
            rows.append((f"{op} {shape} {dtype.removeprefix('torch.')} fwd+bwd, {key[4]}",
                         f">= {vs_eager}x eager, >= {vs_compile}x compile", f"{a:.2f}x, {b:.2f}x",
                         a >= vs_eager and b >= vs_compile, False))
    for key, r in by.items():
        if key[0] == "spatial_softmax_pool" and key[1] == "fwd" and key[3] == dtype and key[4] in ("triton", "ext"):
            bw = r["extra_info"].get("fwd_bytes", 0) / r["median_s"]
            shape = "paper" if '"B": 32' in key[2] else "large"
            rows.append((f"pooling {shape} fwd bandwidth, {key[4]}", f">= {BANDWIDTH_GOAL:.0%} of copy",
                         f"{bw / 1e9:.0f} GB/s = {bw / copy_bw:.0%} of {copy_bw / 1e9:.0f}" if copy_bw else
                         f"{bw / 1e9:.0f} GB/s (no copy row)", bool(copy_bw) and bw >= BANDWIDTH_GOAL * copy_bw, False))
    return rows


def throughput_rows(out: str, name: str = "throughput.json") -> list[tuple]:
    path = os.path.join(out, name)
    if not os.path.isfile(path):
        return [("throughput.json", "written", "missing", False, True)]
    result = json.load(open(path))
    fused = "triton" if result.get("device_type") == "cuda" else "ext"
    want = {"eager": "reference", "fused": fused, "compile": fused}
    ran = [r for r in result.get("step", []) + [result.get("end_to_end") or {}] if "variant" in r]
    wrong = [f"{r['variant']} ran {r.get('backend')}" for r in ran if r.get("backend") != want[r["variant"]]]
    rows = [("every step ran the backend its variant names", "eager: reference, fused and compile: " + fused,
             f"{len(ran) - len(wrong)}/{len(ran)} rows" + (f"; {wrong[0]}" if wrong else ""), not wrong, True)]
    rows += [(f"step stage {r['stage']} {r['variant']} ({r['backend']})", "info",
             f"{r['clips_per_s']:.0f} clips/s, {r['ms_per_step']:.1f} ms" +
             (f", {r['peak_mem_gb']:.1f} GB peak" if "peak_mem_gb" in r else ""), True, False)
            for r in result.get("step", [])]
    rows += [(f"data {r['pipeline']} alone, {r['workers']} workers", "info", f"{r['clips_per_s']:.0f} clips/s",
              True, False) for r in result.get("data", [])]
    e = result.get("end_to_end")
    if e:
        rows.append((f"stage 4 end to end: {e['pipeline']} + {e['variant']}", ">= 1000 clips/s, data not the "
                     "bottleneck", f"{e['clips_per_s']:.0f} clips/s, data {'IS' if e['data_is_bottleneck'] else 'not'}"
                     " the bottleneck", e["clips_per_s"] >= 1000 and not e["data_is_bottleneck"], False))
    if result.get("eval"):
        rows.append(("evaluation features", "info", f"{result['eval']['frames_per_s']:.0f} frames/s", True, False))
    return rows


def sanitize_rows(out: str, recs: list[dict]) -> list[tuple]:
    log = open(os.path.join(out, "sanitize.log")).read() if os.path.isfile(os.path.join(out, "sanitize.log")) else ""
    found = re.findall(r"ERROR SUMMARY: (\d+) error", log)
    rows = [(f"compute-sanitizer {r['name']}", "0 errors", f"rc {r['rc']}" + (f", {found.pop(0)} errors" if found
                                                                              else ""), r["rc"] == 0, True)
            for r in recs if r.get("kind") == "step"]
    return rows


def table(stage: str, out: str) -> tuple[str, int]:
    """The stage's one-screen table and the number of failed correctness rows."""
    recs = records(out, stage)
    env = next((r for r in recs if r.get("kind") == "environment"), {})
    rows = [r for r in step_rows(recs) if stage != "sanitize"]
    if stage == "ops":
        rows += test_rows(recs, "op tests on the device", "tests/ops/")
        rows += test_rows(recs, "determinism (two backward runs bit-identical)", "deterministic")
        rows += ops_rows(recs)
    elif stage == "model":
        rows += throughput_rows(out)
    elif stage == "data":
        rows += test_rows(recs, "data benchmarks", "bench/test_data.py")
        rows += throughput_rows(out)
    elif stage == "sanitize":
        rows += sanitize_rows(out, recs)
    dry = env.get("dry_run")
    lines = [f"gpu_check {stage}: {env.get('device')}; torch {env.get('torch')}, triton {env.get('triton')}, "
             f"git {env.get('git')}, {env.get('date')}" + (" -- DRY RUN: CPU, toy sizes, figures meaningless" if dry
                                                            else ""),
             "| goal | target | measured | reached |", "| --- | --- | --- | --- |"]
    for what, goal, measured, ok, _ in rows:
        lines.append(f"| {what} | {goal} | {measured} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines), sum(1 for *_, ok, correctness in rows if correctness and not ok)


# ---- checks run as steps ----

def check_backends(dev: str) -> int:
    import torch
    import stafast.ops as ops
    have = ops.available_backends(dev)
    want = {"triton", "ext"} if dev == "cuda" else {"ext"}
    print(f"backends on {dev}: {have}" + (f"; extension has CUDA: {torch.ops.stafast_ext.has_cuda()}"
                                          if "ext" in have else ""))
    if not want <= set(have):
        print(f"gpu_check: backends {sorted(want - set(have))} missing on {dev}")
        return 1
    return 0


def check_dali(dev: str) -> int:
    from stafast.data import dali_available
    if not dali_available():
        print("gpu_check: DALI is not installed: the data stage needs its wheels (scripts/gpu_wheels.sh: "
              "download them here, carry the chunks, install them in the stage's call); no silent skip")
        return 1
    import nvidia.dali
    print(f"DALI {nvidia.dali.__version__}, decoding on {'the GPU (mixed)' if dev == 'cuda' else 'the CPU'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bash bench/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one stage")
    r.add_argument("stage", choices=list(STAGE_SECONDS))
    r.add_argument("out")
    r.add_argument("--dry-run", action="store_true")
    sub.add_parser("plan", help="print every stage's plan").add_argument("--stage", choices=list(STAGE_SECONDS))
    sub.add_parser("check-out", help="check the $OUT rules").add_argument("out")
    sub.add_parser("backends").add_argument("dev")
    sub.add_parser("dali").add_argument("dev")
    a = p.parse_args(argv)
    if a.command == "run":
        return run_stage(a.stage, a.out, a.dry_run)
    if a.command == "plan":
        from gpu_plan import print_plan
        return print_plan([a.stage] if a.stage else list(STAGE_SECONDS))
    if a.command == "check-out":
        problems = check_out(a.out)
        print("\n".join(problems) or f"{a.out}: within the device's rules")
        return int(bool(problems))
    return {"backends": check_backends, "dali": check_dali}[a.command](a.dev)


if __name__ == "__main__":
    sys.exit(main())
