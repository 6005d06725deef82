"""Soft-DTW (Cuturi & Blondel 2017) with PyTorch, numba (CPU) and Triton backends; the maths is in README.md.

    soft_dtw(cost [B,N,M], gamma=1.0, lengths_n=None, lengths_m=None, backend="auto") -> [B]
"""

from __future__ import annotations

import torch

from instraction.kernels.soft_dtw.reference import check_inputs, soft_dtw_torch

__all__ = ["soft_dtw"]

_BACKENDS = ("auto", "torch", "numba", "triton")


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def soft_dtw(cost: torch.Tensor, gamma: float = 1.0, lengths_n: torch.Tensor | None = None,
             lengths_m: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Soft-DTW value of each pair: R[n_b, m_b] of the recurrence

        R[0,0] = 0,  R[i,0] = R[0,j] = +inf,
        R[i,j] = cost[b,i-1,j-1] + softmin_gamma(R[i-1,j-1], R[i-1,j], R[i,j-1]),
        softmin_gamma(a) = -gamma * log(sum(exp(-a / gamma))).

    Args:
        cost: [B,N,M] pairwise costs (float64, float32, float16 or bfloat16; half types accumulate in float32).
        gamma: smoothing, > 0; gamma -> 0 gives hard DTW.
        lengths_n, lengths_m: optional integer [B] with 1 <= n_b <= N, 1 <= m_b <= M (a missing one means full
            length). Pair b uses cost[b, :n_b, :m_b]; values beyond are ignored and get exactly zero gradient.
        backend: "auto" (Triton for CUDA tensors; numba for CPU tensors when numba imports, else torch),
            "torch" (pure PyTorch, any device), "numba" (compiled CPU kernels, CPU tensors only; the first call per
            process compiles or loads numba's on-disk cache), or "triton" (CUDA, or CPU tensors under
            TRITON_INTERPRET=1).
    Returns:
        [B] in cost.dtype, differentiable w.r.t. cost.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"soft_dtw: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if cost.is_cuda else ("numba" if cost.device.type == "cpu" and _numba_available()
                                                  else "torch")
    if backend == "torch":
        return soft_dtw_torch(cost, gamma, lengths_n, lengths_m)
    if backend == "numba":
        from instraction.kernels.soft_dtw.cpu import soft_dtw_numba  # imports numba only when asked for

        return soft_dtw_numba(cost, gamma, lengths_n, lengths_m)
    from instraction.kernels.soft_dtw.triton import soft_dtw_triton  # imports triton only when asked for

    lengths_n, lengths_m = check_inputs(cost, gamma, lengths_n, lengths_m)
    return soft_dtw_triton(cost, float(gamma), lengths_n, lengths_m)
