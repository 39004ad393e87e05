#!/usr/bin/env bash
# Third device check: the CUDA tests and the quick bench of every method end to end on CUDA.
set -o pipefail
out=${1:-${OUT:-.}}
export PYTHONPATH=src PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
  if ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
  fi
  echo "=== CUDA tests ($(date +%T))"
  timeout 120 $py -m pytest tests/test_cuda.py tests/test_kernels.py tests/test_compensation.py -q -p no:cacheprovider 2>&1 | tail -5
  echo "=== quick bench on CUDA ($(date +%T))"
  XBARPRUNE_DEBUG=1 timeout 150 $py -m xbarprune.cli bench examples/bench_lenet5.yaml --quick --out /tmp/bq \
    --set quick.base.runtime.device=cuda 2>&1 | grep -v "^  arm" | tail -25
  cp /tmp/bq/summary.md "$out/bench_quick_cuda.md" 2>/dev/null
  echo "=== done ($(date +%T))"
} 2>&1 | tee "$out/device_check3.log"
