"""DTW-Align (paper Sec. 4.2, eq. 5-7): align the ordered action tokens with the ordered verb phrases.

For clip b with K action tokens s_i (projected to the joint space) and m_b verb phrases v_j:

    C[b, i, j]  = 1 - cos(s_i, v_j)                                   cost [B,K,M]        (eq. 5)
    L_align     = SoftDTW_gamma(C[b, :K, :m_b]) / (K + m_b)                                (eq. 5)
    L_order     = max(0, L_align(S, V) - L_align(S, V') + delta)     V' = v_{m_b-1}, ..., v_0   (eq. 6)
    L_dtw       = mean over clips with m_b >= 2 of (L_align + L_order)                     (eq. 7)

Deviations, documented:
* Normalisation by (K + m_b). Soft-DTW sums costs along a monotone path of between max(K, m_b) and K + m_b - 1
  cells, so raw values grow with the lengths; dividing by K + m_b (the usual path-length normaliser, as in the
  paper's Fig. 8 cost) makes the margin delta mean the same thing for a 2-verb and a 4-verb clip.
* Clips with fewer than 2 verb phrases are excluded: with 0 there is nothing to align, with 1 the reversal is
  the identity (L_order == delta, a constant with no signal). When no clip qualifies the loss is 0 (with grad).
* Eq. 7's 1/B averages over the B qualifying clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from instraction import kernels

__all__ = ["DTWAlignLoss", "alignment_cost", "reverse_verbs_index"]


def alignment_cost(tokens: torch.Tensor, verbs: torch.Tensor) -> torch.Tensor:
    """Cosine-distance cost C = 1 - cos(s_i, v_j): tokens [B,K,E], verbs [B,M,E] -> [B,K,M] (float32)."""
    s = F.normalize(tokens.float(), dim=-1)
    v = F.normalize(verbs.float(), dim=-1)
    return 1.0 - s @ v.transpose(1, 2)


def reverse_verbs_index(verb_count: torch.Tensor, max_verbs: int) -> torch.Tensor:
    """[B,M] long: column j -> m_b - 1 - j for j < m_b, j itself for the padding (the reversed order V')."""
    j = torch.arange(max_verbs, device=verb_count.device)[None, :]
    m = verb_count[:, None]
    return torch.where(j < m, m - 1 - j, j)


class DTWAlignLoss(nn.Module):
    """eq. 5-7 with soft-DTW from ``kernels.soft_dtw`` (backend ``auto``: Triton on CUDA, torch elsewhere)."""

    def __init__(self, gamma: float, margin: float, backend: str = "auto"):
        super().__init__()
        self.gamma, self.margin, self.backend = float(gamma), float(margin), backend

    def terms(self, tokens: torch.Tensor, verbs: torch.Tensor, verb_count: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per clip: (L_align [B], L_order [B], valid bool [B]); valid = m_b >= 2. Entries of invalid clips are
        finite but meaningless.

        Args:
            tokens: [B,K,E] action tokens (any scale: the cost is cosine).
            verbs: [B,M,E] verb-phrase embeddings in temporal order; entries j >= verb_count[b] are padding.
            verb_count: long [B], m_b (clamped to [0, M]).
        """
        b, k, _ = tokens.shape
        m_max = verbs.shape[1]
        m = verb_count.to(device=tokens.device, dtype=torch.long).clamp(0, m_max)
        cost = alignment_cost(tokens, verbs)  # [B,K,M]
        rev = reverse_verbs_index(m, m_max)[:, None, :].expand(b, k, m_max)
        cost_rev = cost.gather(2, rev)  # reversing V reverses C's first m_b columns
        lengths_m = m.clamp(min=1).repeat(2)  # zero-length sequences are invalid for soft-DTW; masked below
        lengths_n = torch.full_like(lengths_m, k)
        both = kernels.soft_dtw(torch.cat([cost, cost_rev]), self.gamma, lengths_n, lengths_m, backend=self.backend)
        norm = (k + m.clamp(min=1)).to(both.dtype)
        align, align_rev = both[:b] / norm, both[b:] / norm
        order = F.relu(align - align_rev + self.margin)
        return align, order, m >= 2

    def forward(self, tokens: torch.Tensor, verbs: torch.Tensor, verb_count: torch.Tensor) -> torch.Tensor:
        """Scalar L_dtw (eq. 7). Shapes as in :meth:`terms`."""
        align, order, valid = self.terms(tokens, verbs, verb_count)
        weight = valid.to(align.dtype)
        return ((align + order) * weight).sum() / weight.sum().clamp(min=1.0)
