#!/usr/bin/env bash
# Python wheels the GPU machine lacks (it has no network): DALI and what it needs, and PyAV (the video
# benchmark's torch path and the video datasets' frame counts), for Python 3.12.
#
# Here (with network):   bash scripts/gpu_wheels.sh fetch      -> .whl/chunks/part-*  (60 MB pieces)
# There, per transfer:   bash scripts/gpu_wheels.sh collect    -> appends .whl/chunks/* to /tmp/stafast-wheels.tar
# There, once all came:  bash scripts/gpu_wheels.sh install    -> pip install into /tmp/site (add it to PYTHONPATH)
#
# The device tool carries at most 64 MiB per call: send the chunks in several calls (carry .whl),
# each running `collect`, then `install` in the last one.  .whl/ is ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
fetch)
  rm -rf .whl && mkdir -p .whl/wheels .whl/chunks
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for pkg in nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 nvidia-nvjpeg nvidia-libnvcomp-cu13 nvidia-nvjpeg2k-cu13 \
             astunparse gast dm-tree packaging six wheel av; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
      -d .whl/wheels "$pkg"
  done
  tar -C .whl -cf .whl/wheels.tar wheels && rm -rf .whl/wheels
  split -b 60M -d .whl/wheels.tar .whl/chunks/part- && rm .whl/wheels.tar
  ls -l .whl/chunks ;;
collect)
  cat .whl/chunks/part-* >> /tmp/stafast-wheels.tar && ls -l /tmp/stafast-wheels.tar ;;
install)
  mkdir -p /tmp/stafast-wheels && tar -C /tmp/stafast-wheels -xf /tmp/stafast-wheels.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/stafast-wheels/wheels/*.whl
  echo "export PYTHONPATH=/tmp/site:\$PYTHONPATH" ;;
*)
  echo "usage: $0 fetch|collect|install" >&2; exit 2 ;;
esac
