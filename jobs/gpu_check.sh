#!/usr/bin/env bash
# The GPU acceptance run, in one go, from a plain copy of the repository (no install of the project needed):
#   bash jobs/gpu_wheels.sh WHEEL_DIR        # here, with pip and the network: the packages a bare GPU image lacks
#   bash jobs/gpu_check.sh WHEEL_DIR OUT_DIR # there, on a CUDA machine whose python3 has torch and triton
# Steps, each time-boxed (seconds in brackets, overridable by the variables named), every line timestamped:
#   1. the wheels into a temporary target; versions and the GPU                      -> OUT/gpu.txt      (60)
#   2. the paper-scale step benchmark, profile and learning check (jobs/benchmark.py step), alone on the machine
#                                                                           -> OUT/step.txt, step.json (STEP_S 200)
#   3. the same step with PyTorch's cuBLASLt addmm on (DISABLE_ADDMM_CUDA_LT=0)     -> OUT/step_lt.txt (LT_S 60)
#   4. the compiled kernel tests (-k cuda), both files, spread over processes        -> OUT/tests.txt (TESTS_S 120)
#   5. the soft-DTW GPU benchmark                                                    -> OUT/soft_dtw.txt (SDTW_S 60)
#   6. the banded-attention GPU benchmark (FlexAttention last: its compiles are slow) -> OUT/banded.txt (BANDED_S 80)
# Seven files, one folder. The whole run takes under 8 minutes on an H200. Exit status: the number of failed steps.
set -u
wheels=${1:?usage: bash jobs/gpu_check.sh WHEEL_DIR OUT_DIR}
out=${2:?usage: bash jobs/gpu_check.sh WHEEL_DIR OUT_DIR}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$out"
py=${PYTHON:-python3}
start=$SECONDS
say() { echo "[$(date +%H:%M:%S) +$((SECONDS - start))s] $*"; }
failed=0
run() {  # run NAME SECONDS LOG CMD...: time-boxed, output to the log and (prefixed) to stdout as it comes
  local name=$1 limit=$2 log=$3; shift 3
  say "$name: start (limit ${limit}s)"
  timeout "$limit" "$@" > >(tee "$log") 2>&1
  local rc=$?
  [ "$rc" -eq 124 ] && say "$name: TIMED OUT after ${limit}s" || say "$name: exit $rc"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

site=$(mktemp -d)/site
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
{
  say "installing $(ls "$wheels"/*.whl 2>/dev/null | wc -l) wheels from $wheels"
  timeout 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
    || say "wheel install FAILED"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  timeout 60 "$py" -c 'import torch, triton, deepspeed, omegaconf
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "triton", triton.__version__,
      "deepspeed", deepspeed.__version__, "omegaconf", omegaconf.__version__, "gpus", torch.cuda.device_count())'
  nproc
} 2>&1 | tee "$out/gpu.txt"

run "step benchmark" "${STEP_S:-200}" "$out/step.txt" \
  "$py" jobs/benchmark.py step --learn 40 --profile --budget-s "${STEP_BUDGET_S:-120}" --out "$out/step.json" \
  ${STEP_ARGS:-}
run "step benchmark, cuBLASLt addmm on" "${LT_S:-60}" "$out/step_lt.txt" \
  env DISABLE_ADDMM_CUDA_LT=0 "$py" jobs/benchmark.py step --backends triton --zero 0 -1 --precisions bf16-mixed \
  --batch-sizes 32 --max-batch 0 --no-components --warmup 2 --steps 5 ${STEP_ARGS:-}
# compiling dominates the kernel tests: spread them over processes where pytest-xdist is there
workers=$("$py" -c 'import xdist' 2>/dev/null && echo "-n 8")
run "kernel tests" "${TESTS_S:-120}" "$out/tests.txt" \
  "$py" -m pytest -q -p no:cacheprovider $workers -k cuda tests/test_soft_dtw_triton.py \
  tests/test_banded_attention_triton.py

run "soft-DTW benchmark" "${SDTW_S:-60}" "$out/soft_dtw.txt" "$py" jobs/benchmark.py soft_dtw --gpu ${SDTW_ARGS:-}
run "banded-attention benchmark" "${BANDED_S:-80}" "$out/banded.txt" \
  "$py" -m instraction.kernels.banded_attention.benchmark ${BANDED_ARGS:-}
say "done: $failed failed step(s)"
exit "$failed"
