#!/usr/bin/env bash
# Issue #20 device check (one short run on a lent GPU, see docs/benchmarks.md): the CUDA tests
# of the per-tile ADC kernels and batched trials, then the analog-inference benchmark on CUDA.
# Usage (repository root, on the GPU machine): bash scripts/gpu_check_perf.sh [OUT_DIR]
set -o pipefail
out=${1:-${OUT:-.}}
export PYTHONPATH=src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  nvidia-smi -L
  $py -m pytest tests/test_cuda.py tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tail -3
  $py benchmarks/analog_inference.py --device cuda --rows 64 --cols 64 --repeat 5 --json
  $py benchmarks/analog_inference.py --device cuda --model vgg-small --image-size 32 \
    --in-channels 3 --batch 500 --rows 64 --cols 64 --repeat 5 --no-mem --json
  $py benchmarks/analog_inference.py --device cuda --rows 64 --cols 64 --repeat 5 \
    --batch 100 --no-mem --json
} 2>&1 | tee "$out/gpu_check_perf.log"
