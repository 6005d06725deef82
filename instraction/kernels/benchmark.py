"""GPU benchmarks of both custom ops, each against its baselines in the same process.

    python jobs/benchmark.py kernels                        # banded attention + soft-DTW (GPU)
    python jobs/benchmark.py kernels --windows 1 --batch 8  # extra flags go to the banded-attention benchmark

On a GPU: kernels.banded_attention.benchmark (Triton vs FlexAttention vs masked SDPA) and
kernels.soft_dtw.benchmark.run_gpu. Without a GPU it says so and runs the banded-attention kernels in Triton's
interpreter on small shapes as a correctness check only (soft-DTW has its own CPU benchmark:
`python jobs/benchmark.py soft_dtw`).
"""

from __future__ import annotations

import importlib
import os

import torch


def _soft_dtw_gpu(argv: list[str]) -> int:
    try:  # written by another owner; may not exist yet on a given checkout
        module = importlib.import_module("instraction.kernels.soft_dtw.benchmark")
    except ImportError as err:
        print(f"\nsoft-DTW GPU benchmark skipped: kernels.soft_dtw.benchmark not importable ({err})")
        return 0
    if not hasattr(module, "run_gpu"):
        print("\nsoft-DTW GPU benchmark skipped: kernels.soft_dtw.benchmark has no run_gpu")
        return 0
    print()
    return int(module.run_gpu(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if not torch.cuda.is_available():
        print("kernels benchmark: no CUDA GPU on this machine - no timings; interpreter correctness check instead")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels.banded_attention.triton is imported
    from instraction.kernels.banded_attention import benchmark as banded

    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return banded.main(argv)
    if not torch.cuda.is_available():
        rc = banded.run_interpreter()
        print("\nsoft-DTW GPU benchmark skipped: no CUDA GPU (CPU benchmark: python jobs/benchmark.py soft_dtw)")
        return rc
    rc = banded.run_gpu(argv)
    return rc or _soft_dtw_gpu(argv)
