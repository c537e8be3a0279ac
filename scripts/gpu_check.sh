#!/usr/bin/env bash
# The GPU checks, in one run on a CUDA machine (from the repo root, with a python3 whose torch
# has CUDA, and the official fixtures at ../shared or ./shared):
#   1. fp32 parity with the official fixtures on CUDA (tests/test_end_to_end.py runs its cases on
#      every device present; the stage parity tests run on CPU beside them);
#   2. precision drift of fp32/bf16/fp16 on CUDA (bench/bench_precision.py);
#   3. stage timings, decode speed and peak memory of the released 2B and 7B shapes with random
#      weights in bf16 (bench/bench_gpu.py).
# Logs go to $RESULTS/gpu_check.log and each bench's JSON beside it (default bench/results).
set -uo pipefail
RESULTS=${RESULTS:-bench/results}
PY=${PY:-python3}
LOG="$RESULTS/gpu_check.log"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
status=0
run() {  # run one step, log it, remember a failure and go on with the next
  echo "=== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  "$@" 2>&1 | tee -a "$LOG" || status=1
}
run nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
run "$PY" -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'CUDA', \
torch.version.cuda, torch.cuda.get_device_name(0)); print('onnxruntime', ort.__version__, \
ort.get_available_providers())"
run "$PY" -m pytest -q -p no:cacheprovider -rA tests/test_end_to_end.py \
  tests/test_parity_vision.py tests/test_parity_llm.py
run "$PY" -m bench.bench_precision --device cuda --json "$RESULTS/precision_cuda.json"
run "$PY" -m bench.bench_gpu --preset 2b --json "$RESULTS/gpu_2b.json"
run "$PY" -m bench.bench_gpu --preset 7b --json "$RESULTS/gpu_7b.json"
echo "=== done, status $status ($(date -u +%H:%M:%S))" | tee -a "$LOG"
exit $status
