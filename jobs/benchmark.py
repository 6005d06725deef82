"""Benchmarks, each a ratio against a baseline run side by side in the same process (this machine is noisy).

    python jobs/benchmark.py soft_dtw     # kernels.soft_dtw torch backend vs tslearn / pysdtw (CPU)
    python jobs/benchmark.py kernels      # Triton kernels vs references / FlexAttention / SDPA (GPU; interpreter check on CPU)
    python jobs/benchmark.py data         # Ray Data read+decode+sample pipeline vs raw PyAV / decord decoding
    python jobs/benchmark.py curation     # rules backend captions/s; hf backend vs raw generate
    python jobs/benchmark.py train        # Ray Train + DeepSpeed (2 workers) vs a plain PyTorch loop, interleaved
    python jobs/benchmark.py step         # the paper-scale training step on one GPU (--tiny: default model, CPU)
    python jobs/benchmark.py e2e          # wall time per stage and peak memory of the default run
    python jobs/benchmark.py learn        # what a config learns per step (bench scores), one process, no Ray Train

Extra arguments go to the benchmark (``--help`` after the name lists them). Each benchmark lives beside the code
it measures and shares its setup with the tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from instraction.config import exit_on_config_error


BENCHMARKS = {
    "soft_dtw": "instraction.kernels.soft_dtw.benchmark:main",
    "kernels": "instraction.kernels.benchmark:main",
    "data": "instraction.data.benchmark:main",
    "curation": "instraction.curation.benchmark:main",
    "train": "instraction.train.benchmark:main",
    "step": "instraction.train.step_benchmark:main",
    "e2e": "instraction.workflow_benchmark:main",
    "learn": "instraction.train.learn_benchmark:main",
}


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    module, func = BENCHMARKS[ns.name].split(":")
    return int(getattr(importlib.import_module(module), func)(ns.args) or 0)


if __name__ == "__main__":
    sys.exit(main())
