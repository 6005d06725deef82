"""Pure-PyTorch reference of the banded perceiver cross-attention (and the band it uses).

Latent i of K attends to the frames f of a frame-major key sequence (T frames x P tokens) with

    lo_i = max(0, floor(i*T/K) - window) <= f < hi_i = min(T, ceil((i+1)*T/K) + window)

(docs/ARCHITECTURE.md, stable surface): the K latents tile the clip in time, each with `window` frames of context
either side. The softmax runs over the visible keys only. lo_i < hi_i always (latent i's own span is never empty), so
no row is fully masked. Both lo_i and hi_i are non-decreasing in i, which is what lets the kernel visit a
contiguous frame range per block of latents and a contiguous latent range per block of keys.
"""

from __future__ import annotations

import torch


def band(K: int, frames: int, window: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame bounds of every latent: (lo [K], hi [K]) long, latent i sees frames lo[i] <= f < hi[i]."""
    i = torch.arange(K, device=device)
    lo = (i * frames // K - window).clamp(min=0)
    hi = (((i + 1) * frames + K - 1) // K + window).clamp(max=frames)  # ceil((i+1)T/K) in integers
    return lo, hi


def latent_range(frame_lo: int, frame_hi: int, K: int, frames: int, window: int) -> tuple[int, int]:
    """Latents [i0, i1) that see at least one frame of [frame_lo, frame_hi] (inclusive; 0 <= lo <= hi < T).

    Closed form of {i : lo_i <= frame_hi and hi_i > frame_lo} (contiguous because lo_i, hi_i are monotone):
      hi_i > a      <=>  ceil((i+1)T/K) > a - w   <=>  i >= floor((a - w) K / T)
      lo_i <= b     <=>  floor(iT/K) <= b + w     <=>  i <  ceil((b + w + 1) K / T)
    The Triton dk/dv kernel uses the same integer expressions to pick the latent blocks it visits.
    """
    i0 = max(0, (frame_lo - window) * K // frames)
    i1 = min(K, ((frame_hi + window + 1) * K + frames - 1) // frames)
    return i0, i1


def band_mask(K: int, frames: int, P: int, window: int, device=None) -> torch.Tensor:
    """Visibility mask bool [K, frames*P]: True where latent i may attend key n (frame n // P)."""
    lo, hi = band(K, frames, window, device=device)
    f = torch.arange(frames * P, device=device) // P
    return (f[None, :] >= lo[:, None]) & (f[None, :] < hi[:, None])


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, window: int) -> int:
    """Validate shapes/dtypes of the public op; returns P (tokens per frame)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B,H,*,D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, H or D")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k, v must share dtype and device")
    if int(frames) < 1 or k.shape[2] % int(frames) != 0 or k.shape[2] == 0:
        raise ValueError(f"key length {k.shape[2]} is not frames*P for frames={frames}")
    if int(window) < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if q.shape[2] < 1:
        raise ValueError("q needs at least one latent")
    return k.shape[2] // int(frames)


def banded_cross_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, window: int, scale: float | None = None
) -> torch.Tensor:
    """Masked explicit-softmax attention, differentiable by autograd.

    q [B,H,K,D], k/v [B,H,frames*P,D] -> [B,H,K,D] in q's dtype. Half-precision inputs are computed in float32
    (float64 stays float64) so this is also the accuracy yardstick for the kernel. Memory is O(B*H*K*frames*P).
    """
    P = check_inputs(q, k, v, frames, window)
    K, D = q.shape[2], q.shape[3]
    scale = D**-0.5 if scale is None else float(scale)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    mask = band_mask(K, int(frames), P, int(window), device=q.device)  # [K, N]
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale  # [B,H,K,N]
    scores = scores.masked_fill(~mask, float("-inf"))
    attn = torch.softmax(scores, dim=-1)  # every row has a visible key, so no NaN rows
    return torch.matmul(attn, v.to(compute)).to(q.dtype)
