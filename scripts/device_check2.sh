#!/usr/bin/env bash
# Second device check: CUDA tests with full output, GPU benchmarks with TF32 off in the analog
# layers, and the quick bench end to end on CUDA.
set -o pipefail
out=${1:-${OUT:-.}}
export PYTHONPATH=src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() { echo "=== $1 ($(date +%T))"; }
{
  if ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
  fi
  step "CUDA tests"
  timeout 150 $py -m pytest tests/test_cuda.py tests/test_kernels.py -q -p no:cacheprovider -x 2>&1 | tail -30
  step "GPU benchmark LeNet-5 b1000"
  timeout 90 $py benchmarks/analog_inference.py --device cuda --rows 64 --cols 64 --repeat 5 --no-mem --json 2>&1 | tail -1
  step "GPU benchmark small VGG b500"
  timeout 90 $py benchmarks/analog_inference.py --device cuda --model vgg-small --image-size 32 \
    --in-channels 3 --batch 500 --rows 64 --cols 64 --repeat 5 --no-mem --json 2>&1 | tail -1
  step "quick bench on CUDA"
  timeout 200 $py -m xbarprune.cli bench examples/bench_lenet5.yaml --quick --out /tmp/bq \
    --set quick.base.runtime.device=cuda 2>&1 | tail -8
  cp /tmp/bq/summary.md "$out/bench_quick_cuda.md" 2>/dev/null
  step "done"
} 2>&1 | tee "$out/device_check2.log"
