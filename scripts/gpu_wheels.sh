#!/usr/bin/env bash
# The Python wheels the GPU machine lacks (it has no network), for its Python 3.12 on manylinux
# x86_64: DALI 2.4.0 (nvidia-dali-cuda130) with its exact pins (astunparse, gast, optree, nvtx,
# makefun, libcst~=1.8, nvidia-libnvcomp-cu13==5.3.0.16, nvidia-nvimgcodec-cu13[all] 0.9.x with
# nvjpeg, nvjpeg2k and nvtiff) and PyAV (the data stage's torch pipeline on video files).
#
# Here (PyPI reachable):
#   bash scripts/gpu_wheels.sh download DIR   the whole closure into DIR, proven by pip's resolver
#                                             (--no-index --find-links DIR --target T, the GPU's
#                                             platform); then DIR/chunks: a tar of the wheels the
#                                             machine lacks, split in CHUNK_MB pieces, with sha256s
#   bash scripts/gpu_wheels.sh stage DIR K    puts chunk K (0, 1, ...) alone into .whl/, which the
#                                             device call carries (carry: [".whl"])
# There, one call per chunk, each call right after the previous one (the machine goes back 30 s
# after a call, and with it everything):
#   bash scripts/gpu_wheels.sh collect        moves the carried chunk into .wheelhouse/chunks/, an
#                                             ignored folder of the repository that no call replaces
#                                             (a carried path is replaced at every call; .wheelhouse
#                                             lives as long as the machine)
#   bash scripts/gpu_wheels.sh install        (run by the data stage) checks and joins the chunks,
#                                             installs the wheels into .wheelhouse/site (no network,
#                                             no dependencies resolved there), which gpu_check.sh puts
#                                             on PYTHONPATH; says what is missing if a chunk is
# So the last call is: collect && bash bench/gpu_check.sh --stage data. `download` prints the
# chunks' sizes and the calls they take.
#
# `download` needs a Python 3.12 with pip (PY=..., default python3.12 if found): pip checks the
# wheels' Requires-Python against the interpreter that runs it even with --python-version. The
# resolver check names the older manylinux tags too: nvidia-nvjpeg, -nvjpeg2k-cu13 and -nvtiff-cu13
# exist only as manylinux2014 (glibc 2.17) wheels, which pip does not count as compatible with a
# --platform manylinux_2_28_x86_64 given alone (the GPU machine's newer glibc runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python3.12 || command -v python3)}
CHUNK_MB=${CHUNK_MB:-60}  # + the working tree (~3 MB) within the 64 MiB a call carries
WANT=("nvidia-dali-cuda130==2.4.0" "av>=17")
# On the GPU machine already (KINDS.md's package list): in DIR for the resolver, not carried.
HAVE="numpy packaging six pyyaml typing_extensions wheel"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)  # the GPU machine's glibc (>= 2.28) runs them all
HOUSE=.wheelhouse

resolve() {  # the resolver, as the GPU machine's pip would resolve from DIR alone
  local dir=$1 target rc=0
  target=$(mktemp -d)
  "$PY" -m pip install -q --dry-run --no-index --find-links "$dir" --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target "$target" "${WANT[@]}" || rc=$?
  rm -rf "$target"
  return $rc
}

carried() {  # the wheels of DIR the machine lacks
  local dir=$1 f name
  for f in "$dir"/*.whl; do
    name=$(basename "$f" | cut -d- -f1 | tr 'A-Z-' 'a-z_')
    case " $HAVE " in *" $name "*) ;; *) basename "$f" ;; esac
  done
}

case "${1:-}" in
download)
  dir=${2:?usage: $0 download DIR}
  mkdir -p "$dir"
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$dir" "${WANT[@]}"
  if ! resolve "$dir"; then echo "gpu_wheels: pip cannot resolve ${WANT[*]} from $dir alone" >&2; exit 1; fi
  echo "gpu_wheels: pip resolves ${WANT[*]} from $dir alone (Python 3.12, manylinux_2_28_x86_64)"
  rm -rf "$dir/chunks" && mkdir -p "$dir/chunks"
  (cd "$dir" && carried . | sort > chunks/WHEELS && tar -cf chunks/wheels.tar -T chunks/WHEELS)
  (cd "$dir/chunks" && sha256sum wheels.tar > SHA256SUMS && split -b "${CHUNK_MB}M" -d -a 2 wheels.tar part- \
    && rm wheels.tar && sha256sum part-* >> SHA256SUMS)
  n=$(ls "$dir"/chunks/part-* | wc -l)
  echo "gpu_wheels: $(wc -l < "$dir/chunks/WHEELS") wheels the machine lacks, $(du -cb "$dir"/chunks/part-* | tail -1 | cut -f1) bytes in $n chunks:"
  ls -l "$dir"/chunks/part-* | awk '{print "  " $NF ": " $5 " bytes"}'
  echo "gpu_wheels: $n device calls, each carrying .whl (stage DIR K first): K = 0..$((n - 2)) run 'collect',"
  echo "  the last 'bash scripts/gpu_wheels.sh collect && bash bench/gpu_check.sh --stage data'" ;;
stage)
  dir=${2:?usage: $0 stage DIR K} k=$(printf %02d "${3:?usage: $0 stage DIR K}")
  [ -f "$dir/chunks/part-$k" ] || { echo "gpu_wheels: no chunk $k in $dir/chunks (run download first)" >&2; exit 1; }
  rm -rf .whl && mkdir -p .whl
  cp "$dir/chunks/part-$k" "$dir/chunks/SHA256SUMS" "$dir/chunks/WHEELS" .whl/
  echo "gpu_wheels: .whl holds chunk $k ($(stat -c %s ".whl/part-$k") bytes): carry .whl in the next device call" ;;
collect)
  mkdir -p "$HOUSE/chunks"
  ls .whl/part-* > /dev/null 2>&1 || { echo "gpu_wheels: no chunk in .whl (was .whl carried?)" >&2; exit 1; }
  for f in .whl/part-*; do
    (cd .whl && grep " $(basename "$f")\$" SHA256SUMS | sha256sum -c --quiet) \
      || { echo "gpu_wheels: $f is damaged" >&2; exit 1; }
    mv "$f" "$HOUSE/chunks/"
  done
  cp .whl/SHA256SUMS .whl/WHEELS "$HOUSE/chunks/"
  echo "gpu_wheels: chunks here: $(cd "$HOUSE/chunks" && ls part-* | tr '\n' ' ')" ;;
install)
  chunks=$HOUSE/chunks
  [ -f "$chunks/SHA256SUMS" ] || { echo "gpu_wheels: no chunks collected in $chunks (see $0's header)" >&2; exit 1; }
  missing=$(grep -o 'part-[0-9]*' "$chunks/SHA256SUMS" | while read -r p; do [ -f "$chunks/$p" ] || echo "$p"; done)
  [ -z "$missing" ] || { echo "gpu_wheels: chunks missing: $missing (each goes in its own call, back to back)" >&2; exit 1; }
  cat "$chunks"/part-* > "$HOUSE/wheels.tar"
  (cd "$HOUSE" && grep ' wheels.tar$' chunks/SHA256SUMS | sha256sum -c --quiet) \
    || { echo "gpu_wheels: the joined chunks do not match their sha256" >&2; exit 1; }
  rm -rf "$HOUSE/wheels" "$HOUSE/site" && mkdir -p "$HOUSE/wheels"
  tar -C "$HOUSE/wheels" -xf "$HOUSE/wheels.tar" && rm "$HOUSE/wheels.tar"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$HOUSE/site" "$HOUSE"/wheels/*.whl
  PYTHONPATH=$PWD/$HOUSE/site "$PY" -c "import nvidia.dali, av; print('gpu_wheels: DALI', nvidia.dali.__version__, \
'and PyAV', av.__version__, 'installed in $HOUSE/site')" ;;
*)
  echo "usage: $0 download DIR | stage DIR K | collect | install   (see the header)" >&2; exit 2 ;;
esac
