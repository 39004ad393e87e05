#!/usr/bin/env bash
# The device check of issues #20 / #16 on a lent GPU machine (one short run; see
# docs/benchmarks.md): CUDA exactness tests, the analog-inference benchmark on CUDA, the same
# benchmark on 2 quiet CPU cores (the CPU ratios of issue #20 on an idle machine), and the
# quick-start pipeline end to end on CUDA. Usage, repository root: bash scripts/device_check.sh OUT
set -o pipefail
out=${1:-${OUT:-.}}
export PYTHONPATH=src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() { echo "=== $1 ($(date +%T))"; }
{
  nvidia-smi -L
  $py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  step "CUDA tests"
  timeout 150 $py -m pytest tests/test_cuda.py tests/test_kernels.py -q -p no:cacheprovider 2>&1 | tail -4
  step "GPU benchmark LeNet-5 b1000"
  timeout 90 $py benchmarks/analog_inference.py --device cuda --rows 64 --cols 64 --repeat 5 --json 2>&1 | tail -1
  step "GPU benchmark small VGG b500"
  timeout 90 $py benchmarks/analog_inference.py --device cuda --model vgg-small --image-size 32 \
    --in-channels 3 --batch 500 --rows 64 --cols 64 --repeat 5 --no-mem --json 2>&1 | tail -1
  step "CPU (2 idle cores) LeNet-5 b1000"
  OMP_NUM_THREADS=2 timeout 150 $py benchmarks/analog_inference.py --device cpu --threads 2 \
    --rows 64 --cols 64 --repeat 3 --json 2>&1 | tail -1
  step "CPU (2 idle cores) small VGG b500"
  OMP_NUM_THREADS=2 timeout 120 $py benchmarks/analog_inference.py --device cpu --threads 2 \
    --model vgg-small --image-size 32 --in-channels 3 --batch 500 --rows 64 --cols 64 \
    --repeat 3 --no-mem --trials 2 --json 2>&1 | tail -1
  step "HWA training step through aihwkit-default, small VGG b128, GPU"
  timeout 90 $py benchmarks/hwa_training.py --device cuda --repeat 5 --json 2>&1 | tail -14
  step "quick-start pipeline on CUDA"
  timeout 120 $py -m xbarprune.cli run examples/quickstart.yaml --out /tmp/qs_cuda \
    --set runtime.device=cuda --set evaluate.trials=3 2>&1 | tail -4
  step "done"
} 2>&1 | tee "$out/device_check.log"
