#!/usr/bin/env bash
# The packages jobs/gpu_check.sh needs that a bare GPU image (torch, triton, numpy, numba, transformers) lacks,
# as wheels for its Python (3.12, x86-64 Linux): OmegaConf, DeepSpeed and its missing needs, pysdtw.
#   bash jobs/gpu_wheels.sh WHEEL_DIR    # needs pip, the network and (for DeepSpeed's sdist) torch installed here
set -euo pipefail
dir=${1:?usage: bash jobs/gpu_wheels.sh WHEEL_DIR}
py=${PYTHON:-python}
pyver=${GPU_PYTHON_VERSION:-3.12}
mkdir -p "$dir"
$py -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" \
  omegaconf==2.4.0 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 pysdtw==0.0.5
# DeepSpeed ships an sdist only; without prebuilt ops its wheel is pure Python (ops compile on first use there).
DS_BUILD_OPS=0 $py -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation -w "$dir" deepspeed==0.19.8
ls "$dir"
