"""Masked Action Modeling (paper Sec. 4.3, eq. 9): recover masked action tokens from the action tokens S.

    L_mam = - mean over labelled t of log P(y_{t+1} | h_{1:t}, S)

The decoder reads the caption with its action tokens replaced by <mask> (mam_ids) causally; the hidden state at
position t predicts the original token at t+1 (next-token shift). mam_labels [B,L] holds the original id at
masked positions and -100 (ignore) elsewhere, so only masked action tokens are scored. The mean runs over the
labelled positions of the batch; with none labelled the loss is 0 (still attached to the graph).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "mam_loss", "mam_loss_from_hidden", "next_token_targets"]

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """[B,L] -> [B,L-1]: the target of position t is the label at t+1 (eq. 9's shift)."""
    return labels[:, 1:]


def mam_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """eq. 9 from full logits: logits [B,L,V], labels long [B,L] (-100 = ignore) -> scalar."""
    targets = next_token_targets(labels).reshape(-1)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    total = F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def mam_loss_from_hidden(hidden: torch.Tensor, labels: torch.Tensor,
                         lm_head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """eq. 9 with the LM head applied only where a target exists (== ``mam_loss(lm_head(hidden), labels)``).

    The head is the decoder's costliest matmul (49k-word vocabulary at paper scale) and a caption holds a few
    masked verbs among ~32 tokens, so this saves most of it. hidden [B,L,C], labels long [B,L] -> scalar.
    """
    targets = next_token_targets(labels)
    picked = targets != IGNORE_INDEX  # [B,L-1]
    if not bool(picked.any()):
        return hidden.sum() * 0.0
    logits = lm_head(hidden[:, :-1][picked]).float()  # [N,V]
    return F.cross_entropy(logits, targets[picked])
