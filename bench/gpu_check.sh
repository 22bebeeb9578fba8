#!/usr/bin/env bash
# The GPU check, in one command on the GPU machine (see ../shared/docs/gpu.md; Python 3.12,
# its own torch + triton there, no network):
#
#     bash bench/gpu_check.sh [OUT_DIR]          # default: $OUT, else bench/results/gpu
#
# 1. builds the C++/CUDA extension against that machine's torch (sm_80 + sm_90),
# 2. runs the op tests on CUDA tensors for every backend (triton, ext, reference): values and
#    gradients in fp32/fp64 against fp64 references, bf16/fp16 within their tolerances,
#    gradcheck, opcheck and torch.compile(fullgraph=True),
# 3. runs the benchmarks (eager, torch.compile, triton, ext side by side; bf16 and fp32),
# and writes gpu_tests.xml, gpu_bench.json (device, versions, shapes, dtypes) and gpu_bench.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET

python3 -m pip install -q --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -5
python3 - <<'PY' || exit 1
import torch, triton
import stafast.ops as ops
print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}, "
      f"backends on cuda: {ops.available_backends('cuda')}")
assert "triton" in ops.available_backends("cuda") and "ext" in ops.available_backends("cuda")
PY
STAFAST_TEST_DEVICE=cuda python3 -m pytest tests/ops -q -p no:cacheprovider --junitxml="$out/gpu_tests.xml"
tests=$?
python3 -m pytest bench --benchmark-only -q -p no:cacheprovider --benchmark-json="$out/gpu_bench.json" \
    --benchmark-columns=median,min,rounds
bench=$?
python3 bench/report.py "$out/gpu_bench.json" > "$out/gpu_bench.md" && cat "$out/gpu_bench.md"
echo "gpu_check: tests rc=$tests, benchmarks rc=$bench"
exit $(( tests != 0 || bench != 0 ))
