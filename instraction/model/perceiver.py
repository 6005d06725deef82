"""Action Perceiver (paper Sec. 4.1): K latent queries distil action tokens from dense video tokens.

Student stream (eq. 1), S = Perceiver(q=L, k=V, v=V): the K learnable latents cross-attend to the video tokens
within a temporal band (``kernels.banded_cross_attention``): latent i owns the i-th slice of the clip's frames plus
``window`` frames of context either side, so the action tokens come out ordered in time — the order DTW-Align
(eq. 5-7) aligns to the verb sequence.

Teacher stream (eq. 2), T = Perceiver(q=P, k=V, v=V): verb-phrase embeddings replace the latents and go through
the SAME weights, attending to every frame (see :meth:`ActionPerceiver.forward`).

Latents never attend to each other (no latent self-attention, unlike Flamingo's resampler): a latent's output is
a function of its band's frames only, which keeps each action token local in time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from instraction import kernels
from instraction.kernels.banded_attention import band

__all__ = ["ActionPerceiver", "PerceiverLayer"]


class PerceiverLayer(nn.Module):
    """Pre-LN block: h + CrossAttn(LN(h) -> LN(x)) (banded), then h + MLP(LN(h)).

    h [B,Q,C] queries, x [B,T*P,C] frame-major video tokens.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, attention_backend: str = "auto"):
        super().__init__()
        if width % heads:
            raise ValueError(f"perceiver width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.attention_backend = attention_backend
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.kv_proj = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, width)
        hidden = int(round(width * mlp_ratio))
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, h: torch.Tensor, x: torch.Tensor, frames: int, window: int) -> torch.Tensor:
        """h [B,Q,C], x [B,frames*P,C] -> [B,Q,C]; query i sees the frames of its band (kernels README)."""
        b, q_len, c = h.shape
        n, d = x.shape[1], c // self.heads
        q = self.q_proj(self.ln_q(h)).view(b, q_len, self.heads, d).transpose(1, 2)  # [B,H,Q,D]
        k, v = self.kv_proj(self.ln_kv(x)).view(b, n, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # [B,H,N,D] each
        attn = kernels.banded_cross_attention(q, k, v, frames, window, backend=self.attention_backend)
        h = h + self.out_proj(attn.transpose(1, 2).reshape(b, q_len, c))
        return h + self.mlp(self.ln_mlp(h))


class ActionPerceiver(nn.Module):
    """K learnable latents -> K temporally ordered action tokens; verb-phrase queries -> teacher tokens.

    Args:
        width: C, the video tokens' channel width (the perceiver runs at the video tower's width).
        num_latents: K.
        num_frames: T0, frames of the learned temporal embedding (other clip lengths resample it linearly).
        window: frames of slack each side of a latent's own span (``kernels.banded_cross_attention``).
    """

    def __init__(self, width: int, num_latents: int, num_frames: int, layers: int = 1, heads: int = 4,
                 mlp_ratio: float = 4.0, window: int = 1, attention_backend: str = "auto"):
        super().__init__()
        if num_latents < 1 or num_frames < 1 or window < 0:
            raise ValueError(f"need num_latents >= 1, num_frames >= 1, window >= 0; "
                             f"got {num_latents}, {num_frames}, {window}")
        self.width, self.num_latents, self.window = width, num_latents, window
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)
        # Frame-index embedding shared by the video tokens and (through latent_position) the latents.
        self.temporal_embedding = nn.Parameter(torch.randn(num_frames, width) * 0.02)
        self.layers = nn.ModuleList(PerceiverLayer(width, heads, mlp_ratio, attention_backend) for _ in range(layers))
        self.ln_out = nn.LayerNorm(width)

    def time_embedding(self, frames: int) -> torch.Tensor:
        """[frames, C]: the learned table, linearly resampled when the clip has another number of frames."""
        table = self.temporal_embedding
        if table.shape[0] == frames:
            return table
        if frames == 1 or table.shape[0] == 1:
            return table.mean(0, keepdim=True).expand(frames, -1)
        return F.interpolate(table.t()[None], size=frames, mode="linear", align_corners=True)[0].t()

    def latent_position(self, frames: int) -> torch.Tensor:
        """[K, C]: latent i's position embedding = the mean temporal embedding of the frames it owns
        [floor(iT/K), ceil((i+1)T/K)), so latents and frames share one time code (no extra parameters)."""
        lo, hi = band(self.num_latents, frames, 0, device=self.latents.device)
        f = torch.arange(frames, device=self.latents.device)
        own = ((f[None] >= lo[:, None]) & (f[None] < hi[:, None])).to(self.temporal_embedding.dtype)  # [K,T]
        return (own / own.sum(1, keepdim=True)) @ self.time_embedding(frames)

    def forward(self, video_tokens: torch.Tensor, queries: Optional[torch.Tensor] = None,
                query_mask: Optional[torch.Tensor] = None, banded: bool = True) -> torch.Tensor:
        """Action tokens of a clip.

        Args:
            video_tokens: [B,T,P,C] backbone tokens (T frames of P tokens).
            queries: None -> the K latents (student S, eq. 1); [B,M,C] verb-phrase embeddings -> teacher T (eq. 2).
            query_mask: bool [B,M], True for real queries; padded query rows come back as zeros.
            banded: student only; False lets every latent see every frame (an ablation).
        Returns:
            [B,K,C] (student) or [B,M,C] (teacher), final-LN'd.
        """
        if video_tokens.ndim != 4 or video_tokens.shape[-1] != self.width:
            raise ValueError(f"video_tokens must be [B,T,P,{self.width}], got {tuple(video_tokens.shape)}")
        b, frames = video_tokens.shape[:2]
        time = self.time_embedding(frames).to(video_tokens.dtype)
        x = (video_tokens + time[None, :, None]).flatten(1, 2)  # [B,T*P,C], frame-major as the kernel expects
        if queries is None:
            h = (self.latents + self.latent_position(frames)).to(video_tokens.dtype).expand(b, -1, -1)
            window = self.window if banded else frames
        else:
            if queries.ndim != 3 or queries.shape[0] != b or queries.shape[-1] != self.width:
                raise ValueError(f"queries must be [{b},M,{self.width}], got {tuple(queries.shape)}")
            # A verb phrase has no known temporal position (the caption does not say when it happens), so the
            # teacher query cannot be given a band: window >= frames makes every frame visible.
            h, window = queries.to(video_tokens.dtype), frames
        for layer in self.layers:
            h = layer(h, x, frames, window)
        h = self.ln_out(h)
        if query_mask is not None:
            h = h * query_mask[..., None].to(h.dtype)
        return h
