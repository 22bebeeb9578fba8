#!/usr/bin/env bash
# The GPU check, in one command on the GPU machine (see ../shared/docs/gpu.md; Python 3.12,
# its own torch + triton there, no network):
#
#     bash bench/gpu_check.sh [OUT_DIR]          # default: $OUT, else bench/results/gpu
#     bash bench/gpu_check.sh --dry-run [OUT_DIR]   # CPU, toy sizes, every step (CI runs this)
#
# 1. builds the C++/CUDA extension against that machine's torch (sm_80 + sm_90),
# 2. runs the op tests on CUDA tensors for every backend (triton, ext, reference): values and
#    gradients in fp32/fp64 against fp64 references, bf16/fp16 within their tolerances,
#    gradcheck, opcheck and torch.compile(fullgraph=True),
# 3. runs the op and model-step benchmarks (eager, torch.compile, triton, ext side by side; bf16
#    and fp32) and the data pipelines' (bench/test_data.py: JPEG frames with nvJPEG, and video
#    files, VP9 / MJPEG / H.264, decoded by DALI on the GPU with NVDEC, against the torch
#    DataLoader with PyAV, 256x128, same workers),
# 4. measures training throughput (bench/throughput.py): the step alone for stages 3 and 4
#    (eager / fused / --compile), the DALI pipeline alone, both together (is data the
#    bottleneck?) and evaluation frames/s, at the paper's settings (ResNet-50, bf16,
#    channels_last, 256x128, B = 32 x N = 6),
# and writes gpu_tests.xml, gpu_bench.json (device, versions, shapes, dtypes), gpu_bench.md,
# throughput.json and throughput.md.
#
# --dry-run runs every step on the CPU at toy sizes, so that the first run on a GPU machine
# cannot trip on this script: the build is checked with `pip install --dry-run` (make install
# built the extension), a few op tests and benchmarks run (the whole suites are make test's and
# make bench's), and throughput.py --dry-run writes every section of its JSON.  Its figures
# mean nothing.  Output: OUT_DIR, else a temporary folder (removed when the dry run passes).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
py=${PY:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
tmp_out=0
if [ $dry = 1 ]; then
  [ -z "${1:-}" ] && tmp_out=1
  out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/stafast-gpu-check-dry-run.XXXXXX")}
  dev=cpu
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1 STAFAST_BENCH_ROUNDS=1
  ops_select=(-k "test_known_values or test_rows_are_the_contributions or test_reductions")  # all: make test
  bench_select=(-k "(fwd-paper-float32 and not compile) or (data and not mjpeg)")  # all: make bench
  throughput=(--dry-run)
else
  out=${1:-${OUT:-bench/results/gpu}}
  dev=cuda
  unset TRITON_INTERPRET
  ops_select=() bench_select=() throughput=()
fi
mkdir -p "$out"
echo "gpu_check: output in $out$([ $dry = 1 ] && echo ' (dry run: CPU, toy sizes)')"

build=(-m pip install -q --no-build-isolation --no-deps --no-index -e .)
[ $dry = 1 ] && build=(-m pip install -q --dry-run --no-build-isolation --no-deps --no-index -e .)
$py "${build[@]}" 2>&1 | tail -5
$py - "$dev" <<'PY' || exit 1
import sys
import torch, triton
import stafast.ops as ops
dev = sys.argv[1]
name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
print(f"torch {torch.__version__}, triton {triton.__version__}, {name}, "
      f"backends on {dev}: {ops.available_backends(dev)}")
want = {"triton", "ext"} if dev == "cuda" else {"ext"}
assert want <= set(ops.available_backends(dev)), f"backends {want} expected on {dev}"
PY
STAFAST_TEST_DEVICE=$dev $py -m pytest tests/ops -q -p no:cacheprovider --junitxml="$out/gpu_tests.xml" "${ops_select[@]}"
tests=$?
$py -m pytest bench --benchmark-only -q -p no:cacheprovider --benchmark-json="$out/gpu_bench.json" \
    --benchmark-columns=median,min,rounds "${bench_select[@]}"
bench=$?
$py bench/report.py "$out/gpu_bench.json" > "$out/gpu_bench.md" && cat "$out/gpu_bench.md"
report=$?
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} $py bench/throughput.py --out "$out" "${throughput[@]}"
through=$?
$py - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
missing = [f for f in ("gpu_tests.xml", "gpu_bench.json", "gpu_bench.md", "throughput.json", "throughput.md")
           if not os.path.isfile(os.path.join(out, f))]
sections = json.load(open(os.path.join(out, "throughput.json"))) if "throughput.json" not in missing else {}
empty = [k for k in ("environment", "step", "data", "end_to_end", "eval") if not sections.get(k)]
print(f"gpu_check: files missing {missing}, throughput sections empty {empty}")
sys.exit(1 if missing or empty else 0)
PY
files=$?
echo "gpu_check: tests rc=$tests, benchmarks rc=$bench, report rc=$report, throughput rc=$through, outputs rc=$files"
failed=$(( tests != 0 || bench != 0 || report != 0 || through != 0 || files != 0 ))
if [ $tmp_out = 1 ] && [ $failed = 0 ]; then rm -rf "$out"; fi  # a passing dry run leaves nothing behind
exit $failed
