"""Banded perceiver cross-attention: K latents attend to a frame-major video token sequence, each latent to a
window of frames around its own slice of time (see README.md for the band and the kernel maths).

    banded_cross_attention(q [B,H,K,D], k [B,H,T*P,D], v [B,H,T*P,D], frames=T, window, scale=None,
                           backend="auto") -> [B,H,K,D]

backend: "torch" (reference.py, masked softmax), "triton" (triton.py, flash-style kernels that visit only the
band), "auto" (Triton for fp32/fp16/bf16 CUDA tensors when Triton is importable, the reference
otherwise). "triton" on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter; slow, for tests)."""

from __future__ import annotations

import os

import torch

from instraction.kernels.banded_attention.reference import band, band_mask, banded_cross_attention_reference, check_inputs

BACKENDS = ("auto", "torch", "triton")

__all__ = ["banded_cross_attention", "band", "band_mask", "banded_cross_attention_reference", "BACKENDS"]


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def banded_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    frames: int,
    window: int,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-attention of K latents over frames*P frame-major keys, restricted to a band of frames.

    Args:
        q: [B,H,K,D] latent queries.
        k, v: [B,H,frames*P,D]; the P tokens of frame t are k[:, :, t*P:(t+1)*P].
        frames: T, the number of frames.
        window: frames of context either side of each latent's own span (>= 0).
        scale: softmax scale, default D**-0.5.
        backend: "auto" | "torch" | "triton".
    Returns:
        [B,H,K,D] in q's dtype; latent i sees frames max(0, floor(iT/K)-window) <= f < min(T, ceil((i+1)T/K)+window).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_inputs(q, k, v, frames, window)
    if backend == "auto":
        kernel_dtype = q.dtype in (torch.float32, torch.float16, torch.bfloat16)
        backend = "triton" if q.is_cuda and kernel_dtype and _triton_available() else "torch"
    if backend == "torch":
        return banded_cross_attention_reference(q, k, v, frames, window, scale)
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    from instraction.kernels.banded_attention.triton import banded_cross_attention_triton

    return banded_cross_attention_triton(q, k, v, frames, window, scale)
