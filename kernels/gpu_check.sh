#!/usr/bin/env bash
# GPU acceptance of the Triton kernels, in one go (each step time-boxed, every log kept):
#   1. the kernel tests on CUDA tensors with the compiled, autotuned kernels (TRITON_INTERPRET=0, -k cuda), the
#      two files in parallel (logs tests_*.txt);
#   2. the soft-DTW benchmark (Triton vs pysdtw's CUDA kernel vs the torch backend);
#   3. the banded-attention benchmark (Triton vs FlexAttention vs masked SDPA).
# Usage, on a CUDA machine, from the repository root:  bash kernels/gpu_check.sh [LOG_DIR]
# pysdtw (the `bench` extra) must be importable for step 2's peer column; without it that column is skipped.
set -u
py=${PYTHON:-python3}
out=${1:-${OUT:-gpu_check_logs}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$out/gpu.txt"
# the two test files run side by side (compiling is single-threaded per process; the machine has cores to spare)
for t in soft_dtw banded_attention; do
  timeout "${TEST_S:-180}" "$py" -m pytest -q -p no:cacheprovider -k cuda "tests/test_${t}_triton.py" \
      > "$out/tests_$t.txt" 2>&1 &
done
wait
tail -n 5 "$out"/tests_*.txt
timeout "${SDTW_S:-200}" "$py" jobs/benchmark.py soft_dtw --gpu ${SDTW_ARGS:-} 2>&1 | tee "$out/soft_dtw.txt"
timeout "${BANDED_S:-200}" "$py" -c 'import sys; from instraction.kernels.banded_attention.benchmark import run_gpu; sys.exit(run_gpu(sys.argv[1:]))' \
    ${BANDED_ARGS:-} 2>&1 | tee "$out/banded.txt"
