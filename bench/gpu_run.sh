#!/usr/bin/env bash
# The whole GPU suite in one device call: unpack CIFAR-10, install the peer's wheels (no index), run
# bench/gpu_suite.py with PYTHONPATH=src. About 8.5 minutes on one H100/H200; results in $OUT (the device
# tool's output folder), else ./gpu-suite-out. Extra arguments go to the suite (e.g. --stages speed,resume).
#
#   bench/gpu_run.sh --prepare     # here, once: copy the data, the peer script and its wheels into .data/
#   bench/gpu_run.sh               # there: carry .data, run this (see docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    shared=${SHARED:-../shared}
    mkdir -p .data/wheels
    cp "$shared/data/cifar10-jpeg.tar.gz" "$shared/bench/peer_lightly_simsiam.py" .data/
    cp "$shared"/bench/wheels/*.whl .data/wheels/
    du -sh .data
    exit 0
fi
out=${OUT:-gpu-suite-out}
work=${SUITE_WORK:-/tmp/sslab-gpu-suite}  # the unpacked data, the peer's packages, the run folders
mkdir -p "$work/data" "$out"
tar -xzf .data/cifar10-jpeg.tar.gz -C "$work/data"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/peer" .data/wheels/*.whl
export PYTHONPATH="src:$work/peer" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
python3 bench/gpu_suite.py --data "$work/data/cifar10-jpeg" --peer .data/peer_lightly_simsiam.py \
    --out "$out" --runs "$work/runs" "$@" 2>&1 | tee "$out/gpu_suite.log"
