#!/usr/bin/env bash
# The GPU check, in stages sized to the GPU lease (../shared/docs/gpu.md: 15 minutes of device time
# in all, at most 10 per command, 8 files back from $OUT). On the GPU machine, one call per stage,
# in this order, each call right after the previous one (the machine goes back 30 s after a call):
#
#     bash bench/gpu_check.sh --stage ops [OUT]       # build for sm_90, op tests on CUDA, determinism, op benchmarks
#     bash bench/gpu_check.sh --stage model [OUT]     # training-step throughput, torch pipeline, evaluation
#     bash bench/gpu_check.sh --stage data [OUT]      # DALI mixed decoding vs the torch pipeline (needs its wheels)
#     bash bench/gpu_check.sh --stage sanitize [OUT]  # compute-sanitizer memcheck, racecheck, synccheck
#     bash bench/gpu_check.sh --plan [--stage S]      # what each stage runs, its counts, its H200 time estimate
#     bash bench/gpu_check.sh --dry-run [--stage S] [OUT]   # every stage on the CPU at toy sizes (make test, CI)
#
# OUT: the folder given, else $OUT, else bench/results/gpu. A stage writes STAGE.log, STAGE.jsonl
# (results as they finish), its own result files and STAGE.md (the table: goal / measured /
# reached) there, at most 8 files, and stops its steps at its budget (under 8 minutes), so that
# what it finished always comes back. The data stage installs DALI and PyAV from the wheels that
# scripts/gpu_wheels.sh assembled on the machine (its header says how they travel).
# --dry-run runs each stage into OUT/STAGE (a temporary folder, removed when everything passes),
# checks each stage's files against the device's rules, then prints the plan. Its figures mean
# nothing; it proves that the first GPU run cannot trip on this script.
set -uo pipefail
cd "$(dirname "$0")/.."
export PY=${PY:-python3} PYTHONUNBUFFERED=1
stage="" dry=0 plan=0 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=${2:?--stage needs ops, model, data or sanitize}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --plan) plan=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
stage_py=(env PYTHONPATH="$PWD/bench" "$PY" bench/gpu_stage.py)
if [ $plan = 1 ]; then
  exec "${stage_py[@]}" plan ${stage:+--stage "$stage"}
fi
if [ $dry = 0 ]; then
  [ -n "$stage" ] || { echo "gpu_check: say which stage: --stage ops|model|data|sanitize (or --plan, --dry-run)" >&2; exit 2; }
  exec "${stage_py[@]}" run "$stage" "${out:-${OUT:-bench/results/gpu}}"
fi

# The dry run: the CPU, toy sizes, each stage into its own folder as if it were $OUT.
export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
tmp_out=0
if [ -z "$out" ]; then tmp_out=1; out=$(mktemp -d "${TMPDIR:-/tmp}/stafast-gpu-check-dry-run.XXXXXX"); fi
failed=0
for s in ${stage:-ops model data sanitize}; do
  "${stage_py[@]}" run "$s" "$out/$s" --dry-run || { echo "gpu_check: dry run of stage $s FAILED"; failed=1; }
done
"${stage_py[@]}" plan ${stage:+--stage "$stage"} || failed=1
echo "gpu_check: dry run $([ $failed = 0 ] && echo passed || echo FAILED) (output in $out)"
if [ $tmp_out = 1 ] && [ $failed = 0 ]; then rm -rf "$out"; fi  # a passing dry run leaves nothing behind
exit $failed
