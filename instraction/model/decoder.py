"""Multimodal decoder for Masked Action Modeling (paper Sec. 4.3, eq. 8), CoCa-style.

Each layer: h = h + SelfAttn(LN(h)) (causal, with the key padding mask), h = h + CrossAttn(LN(h) -> S) to the
action tokens S, h = h + MLP(LN(h)) — eq. 8, h^l = CrossAttn(SelfAttn(h^{l-1}); S), with pre-LN residuals.
The token embedding is the text tower's (passed in, shared) and the LM head is tied to it, so predicting a
masked verb means landing near that verb's input embedding.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from instraction.model.backbone import attention

__all__ = ["MultimodalDecoder", "DecoderLayer"]


def _heads_split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B,N,C] -> [B,H,N,C/H]."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _heads_merge(x: torch.Tensor) -> torch.Tensor:
    """[B,H,N,D] -> [B,N,H*D]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class DecoderLayer(nn.Module):
    """Pre-LN block of eq. 8: causal self-attention, cross-attention to the condition tokens, MLP.

    ``cond_width`` may differ from ``width`` (the action tokens live at the video tower's width).
    """

    def __init__(self, width: int, cond_width: int, heads: int, mlp_ratio: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"decoder width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.ln_self = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.ln_cross = nn.LayerNorm(width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(cond_width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        hidden = int(round(width * mlp_ratio))
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, h: torch.Tensor, self_mask: torch.Tensor, cond: torch.Tensor,
                cond_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """h [B,L,C]; self_mask bool [B,1,L,L] (True = may attend); cond [B,K,Cc]; cond_mask bool [B,1,1,K] or None."""
        q, k, v = self.qkv(self.ln_self(h)).chunk(3, dim=-1)
        attn = attention(
            _heads_split(q, self.heads), _heads_split(k, self.heads), _heads_split(v, self.heads), attn_mask=self_mask
        )
        h = h + self.self_out(_heads_merge(attn))
        k, v = self.cross_kv(cond).chunk(2, dim=-1)
        attn = attention(
            _heads_split(self.cross_q(self.ln_cross(h)), self.heads), _heads_split(k, self.heads),
            _heads_split(v, self.heads), attn_mask=cond_mask,
        )
        h = h + self.cross_out(_heads_merge(attn))
        return h + self.mlp(self.ln_mlp(h))


class MultimodalDecoder(nn.Module):
    """Text decoder conditioned on action tokens; LM head tied to the shared token embedding.

    Args:
        token_embedding: the text tower's nn.Embedding [V, C] (shared, not copied).
        context_length: longest token sequence (learned positions).
        cond_width: Cc, width of the condition tokens S.
    """

    def __init__(self, token_embedding: nn.Embedding, context_length: int, cond_width: int, layers: int = 1,
                 heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        width = token_embedding.embedding_dim
        self.token_embedding = token_embedding
        self.context_length = context_length
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.ln_cond = nn.LayerNorm(cond_width)
        self.layers = nn.ModuleList(DecoderLayer(width, cond_width, heads, mlp_ratio) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor,
                cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """ids long [B,L], mask bool [B,L] (True = real token), cond [B,K,Cc], cond_mask bool [B,K] or None
        -> hidden states [B,L,C] after the final LN (``lm_head`` turns them into logits)."""
        b, n = ids.shape
        if n > self.context_length:
            raise ValueError(f"decoder input length {n} exceeds context_length {self.context_length}")
        h = self.token_embedding(ids) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=ids.device)
        # Padding keys are hidden; every position still sees itself so no softmax row is empty (NaN-free).
        self_mask = ((causal & mask.bool()[:, None, None, :]) | eye)  # [B,1,L,L]
        cond = self.ln_cond(cond).to(h.dtype)
        cmask = None if cond_mask is None else cond_mask.bool()[:, None, None, :]
        for layer in self.layers:
            h = layer(h, self_mask, cond, cmask)
        return self.ln_final(h)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., C] -> logits [..., V] through the tied token embedding."""
        return F.linear(hidden, self.token_embedding.weight)
