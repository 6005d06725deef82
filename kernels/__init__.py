"""Custom ops of InstrAction, each with a pure-PyTorch reference and a Triton kernel.

    soft_dtw(cost, gamma=1.0, lengths_n=None, lengths_m=None, backend="auto") -> Tensor[B]
    banded_cross_attention(q, k, v, frames, window, scale=None, backend="auto") -> Tensor[B,H,K,D]

backend="auto" runs Triton on CUDA tensors and the reference otherwise; backend="triton" on CPU tensors runs
in Triton's interpreter when TRITON_INTERPRET=1 (how the tests check the kernels without a GPU).
"""

from kernels.banded_attention import banded_cross_attention
from kernels.soft_dtw import soft_dtw

__all__ = ["soft_dtw", "banded_cross_attention"]
