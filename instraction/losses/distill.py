"""Verb-guided distillation (paper Sec. 4.1, eq. 3-4): the student action tokens learn from the teacher stream.

Scores (scaled cosine, the contrastive loss's logit scale s): student video embedding v_i (mean of the student
action tokens) and teacher video embedding u_i (mean of the verb-conditioned teacher tokens) against texts t_j:

    s_v2t[i, j] = s * v_i . t_j     s^t_v2t[i, j] = s * u_i . t_j        (rows: local videos, cols: global texts)
    s_t2v[i, j] = s * t_i . v_j     s^t_t2v[i, j] = s * t_i . u_j        (rows: local texts, cols: global videos)

eq. 3, per row with y the one-hot positive and sigma the softmax:
    L_single(s, s^t) = -(1 - alpha) sum_j y_j log sigma(s)_j - alpha sum_j sigma(s^t)_j log sigma(s)_j
The targets sigma(s^t) are detached (stop-gradient): the student moves to the teacher, never the reverse.
eq. 4: L_distill = L_single(s_v2t, s^t_v2t) + L_single(s_t2v, s^t_t2v), each direction the mean over its rows.

Choices the paper leaves open, documented here:
* Teacher learning signal. The teacher stream shares the Perceiver and the text tower and is trained jointly
  (Sec. 4.1), but eq. 3 gives it no gradient (its targets are detached). We add the teacher's own InfoNCE,
  CE(s^t_v2t, y) + CE(s^t_t2v, y), inside this loss (``terms`` returns it separately).
* Clips without verb phrases (verb_count == 0) have no teacher. Their rows fall back to plain CE (alpha = 0),
  and in t2v their teacher column is removed from the targets (-inf before the softmax); the teacher CE
  skips their rows. The teacher CE is normalised by the number of local rows B (not by the teacher rows), so
  the mean of the per-rank values is the global-batch value whatever the per-rank teacher counts.
* Across ranks the columns are global (gathered like the contrastive loss, same gradient bookkeeping).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from instraction.losses.contrastive import gather_features, gather_many, rank_and_world

__all__ = ["DistillLoss", "gather_for_both", "soft_cross_entropy"]


def gather_for_both(video: torch.Tensor, text: torch.Tensor, teacher: torch.Tensor, has_teacher: torch.Tensor,
                    gather_with_grad: bool = True) -> dict[str, tuple[torch.Tensor, ...]]:
    """The global batch's clip, caption and teacher embeddings (and which clips have a teacher) in one collective
    (``contrastive.gather_many``), laid out as the two losses take them: ``{"contrastive": (videos, texts),
    "distill": (students, teachers, texts, has_teacher)}`` for ``ContrastiveLoss(..., gathered=)`` and
    ``DistillLoss.terms(..., gathered=)``. video, text, teacher [B,E]; has_teacher bool [B]."""
    all_v, all_t, all_u, all_has = gather_many(
        [video.float(), text.float(), teacher.float(), has_teacher.float()[:, None]], gather_with_grad)
    return {"contrastive": (all_v, all_t), "distill": (all_v, all_u, all_t, all_has[:, 0] > 0.5)}


def soft_cross_entropy(s: torch.Tensor, s_teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                       distill_rows: torch.Tensor) -> torch.Tensor:
    """eq. 3 per row: [R] losses. s, s_teacher [R,N] logits; labels [R] long; distill_rows bool [R] (False -> CE).

    s_teacher may hold -inf columns (absent teachers); a row of distill_rows must keep a finite teacher entry.
    """
    logp = F.log_softmax(s.float(), dim=-1)
    ce = -logp.gather(1, labels[:, None]).squeeze(1)
    target = torch.softmax(s_teacher.detach().float(), dim=-1)
    # Rows without a teacher may be all -inf (NaN softmax): zero them so no NaN reaches the backward pass.
    target = torch.where(distill_rows[:, None], target, torch.zeros_like(target))
    soft = -(target * logp).sum(-1)
    return torch.where(distill_rows, (1.0 - alpha) * ce + alpha * soft, ce)


class DistillLoss(nn.Module):
    """eq. 3-4 plus the teacher's own InfoNCE (see module docstring). ``alpha`` is eq. 3's distillation intensity."""

    def __init__(self, alpha: float, gather_with_grad: bool = True):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.alpha = alpha
        self.gather_with_grad = gather_with_grad

    def terms(self, student: torch.Tensor, teacher: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              has_teacher: torch.Tensor, gathered: Optional[tuple[torch.Tensor, ...]] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distill, teacher_ce): eq. 4 on the student, and the teacher's own InfoNCE (both directions summed).

        Args:
            student: [B,E] L2-normalised student video embeddings.
            teacher: [B,E] L2-normalised teacher video embeddings (rows without a teacher are ignored).
            text: [B,E] L2-normalised caption embeddings.
            logit_scale: scalar tensor (1/temperature), shared with the contrastive loss.
            has_teacher: bool [B], False for clips with no verb phrase (verb_count == 0).
            gathered: optional (all students, all teachers, all texts, all has_teacher) already gathered for these
                inputs (``contrastive.gather_many``, shared with the contrastive loss), instead of gathering here.
        """
        rank, _ = rank_and_world()
        b = student.shape[0]
        student, teacher, text = student.float(), teacher.float(), text.float()
        has_teacher = has_teacher.bool()
        if gathered is None:
            all_text = gather_features(text, self.gather_with_grad)
            all_student = gather_features(student, self.gather_with_grad)
            all_teacher = gather_features(teacher, self.gather_with_grad)
            all_has = gather_features(has_teacher, False)
        else:
            all_student, all_teacher, all_text = (x.float() for x in gathered[:3])
            all_has = gathered[3].bool()
        labels = torch.arange(b, device=student.device) + rank * b

        s_v2t = logit_scale * student @ all_text.t()  # [B, W*B]
        t_v2t = logit_scale * teacher @ all_text.t()
        s_t2v = logit_scale * text @ all_student.t()
        t_t2v = (logit_scale * text @ all_teacher.t()).masked_fill(~all_has[None, :], float("-inf"))

        distill = (soft_cross_entropy(s_v2t, t_v2t, labels, self.alpha, has_teacher).mean()
                   + soft_cross_entropy(s_t2v, t_t2v, labels, self.alpha, has_teacher).mean())
        # Teacher-less rows: their CE is replaced by 0 *before* the sum (their t2v rows may be all -inf).
        ce_v2t = F.cross_entropy(t_v2t, labels, reduction="none")
        ce_t2v = F.cross_entropy(t_t2v.masked_fill(~has_teacher[:, None], 0.0), labels, reduction="none")
        teacher_ce = torch.where(has_teacher, ce_v2t + ce_t2v, 0.0).sum() / b
        return distill, teacher_ce

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                has_teacher: torch.Tensor, gathered: Optional[tuple[torch.Tensor, ...]] = None) -> torch.Tensor:
        """Scalar: eq. 4 + the teacher's InfoNCE. Shapes as in :meth:`terms`."""
        distill, teacher_ce = self.terms(student, teacher, text, logit_scale, has_teacher, gathered)
        return distill + teacher_ce
