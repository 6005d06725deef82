"""Video<->text InfoNCE with action-centric hard negatives (paper Sec. 3 and 4), local across ranks.

Per rank, with B local clips, W ranks and s the learnable logit scale (1/temperature):

    v2t[i, :] = s * [ v_i . t_j  for the W*B global texts j  |  v_i . n_ik  for this clip's own negatives k ]
    t2v[i, :] = s *   t_i . v_j  for the W*B global videos j
    loss      = ( CE(v2t, y) + CE(t2v, y) ) / 2,   y_i = rank * B + i,   mean over the B local rows.

Hard negatives (verb-altered / order-swapped captions of the same clip) only make sense as alternatives for
their own video, so they are extra columns of that video's row in the video->text direction only; absent ones
(neg_mask False) are -inf, i.e. no column.

Distributed (open_clip's ``local_loss`` + ``gather_with_grad``): features are all-gathered with gradient and each
rank builds only its [B, W*B (+Nn)] rows — no rank holds the global [W*B, W*B] matrix. Gradient bookkeeping:
the global loss is L = (1/W) sum_r L_r. The all-gather backward sums, into each rank's own features, the
gradients that every rank's loss sends them, so after ``L_r.backward()`` rank r holds d(sum_r' L_r')/dx_r =
W * dL/dx_r. DDP / DeepSpeed then *average* parameter gradients over the W ranks, which divides that W back out:
the update is exactly that of the single-process loss on the global batch. (Requires equal B on every rank,
which the trainer's equal-size batches give.) With ``gather_with_grad=False`` the other ranks' features are
constants: cheaper, but each feature only receives the gradient of its own rank's rows (biased, open_clip's
caveat). Without torch.distributed initialised this is plain single-process InfoNCE.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["ContrastiveLoss", "gather_features", "gather_many", "rank_and_world", "hard_negative_margin"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """cat(all_gather(x)) [W*B, ...]; backward returns this rank's slice of the SUM over ranks of the incoming
    gradients (reduce-scatter on NCCL, all-reduce + slice elsewhere: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.world, ctx.rows = rank, world, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = grad.new_empty((ctx.rows,) + tuple(grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_features(x: torch.Tensor, gather_with_grad: bool = True) -> torch.Tensor:
    """All ranks' ``x`` stacked along dim 0: [B, ...] -> [W*B, ...] in rank order (``x`` itself when W == 1).

    gather_with_grad: gradients flow back to every rank's features (summed, see the module docstring);
    otherwise only this rank's own slice keeps its autograd link. Non-float tensors are gathered as constants.
    """
    rank, world = rank_and_world()
    if world == 1:
        return x
    if gather_with_grad and x.is_floating_point() and x.requires_grad:
        return _AllGatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x  # the local slice keeps its gradient
    return torch.cat(parts, dim=0)


def gather_many(tensors: Sequence[torch.Tensor], gather_with_grad: bool = True) -> list[torch.Tensor]:
    """:func:`gather_features` of several [B, d_i] float tensors (one dtype) in one collective: concatenated along
    the features, gathered once (with gradient: one all-reduce in backward, not one per tensor), split back.
    The contrastive and distillation losses gather the same clip and caption embeddings, so a step that runs both
    shares one gather for all of them (``losses.distill.gather_for_both``)."""
    widths = [t.shape[1] for t in tensors]
    if rank_and_world()[1] == 1:
        return list(tensors)
    return list(gather_features(torch.cat(list(tensors), dim=1), gather_with_grad).split(widths, dim=1))


def _negative_logits(video: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor, scale=1.0) -> torch.Tensor:
    """[B,Nn] scaled cosine scores of each video against its own negatives, -inf where neg_mask is False.

    The mask comes after the scale: scale * -inf would send a NaN (-inf * 0) into the scale's gradient."""
    scores = scale * torch.einsum("be,bne->bn", video, neg.to(video.dtype))
    return scores.masked_fill(~neg_mask.bool(), float("-inf"))


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over the global batch, local rows, own hard negatives in v2t (see module docstring)."""

    def __init__(self, gather_with_grad: bool = True):
        super().__init__()
        self.gather_with_grad = gather_with_grad

    def logits(self, video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
               neg: Optional[torch.Tensor] = None, neg_mask: Optional[torch.Tensor] = None,
               gathered: Optional[tuple[torch.Tensor, torch.Tensor]] = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(v2t [B, W*B (+Nn)], t2v [B, W*B], labels [B]) in float32. ``gathered``: (all videos, all texts) as
        :func:`gather_many` returned them for these ``video`` and ``text`` (float32), instead of gathering here."""
        rank, _ = rank_and_world()
        video, text = video.float(), text.float()  # softmax over many columns wants fp32 under bf16 training
        if gathered is None:
            all_video = gather_features(video, self.gather_with_grad)
            all_text = gather_features(text, self.gather_with_grad)
        else:
            all_video, all_text = (x.float() for x in gathered)
        v2t = logit_scale * video @ all_text.t()
        if neg is not None and neg.shape[1] > 0:
            if neg_mask is None:
                raise ValueError("neg needs neg_mask [B,Nn]")
            v2t = torch.cat([v2t, _negative_logits(video, neg.float(), neg_mask, logit_scale)], dim=1)
        t2v = logit_scale * text @ all_video.t()
        labels = torch.arange(video.shape[0], device=video.device) + rank * video.shape[0]
        return v2t, t2v, labels

    def forward(self, video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                neg: Optional[torch.Tensor] = None, neg_mask: Optional[torch.Tensor] = None,
                gathered: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """InfoNCE (scalar, mean over this rank's rows of both directions' CE, halved).

        Args:
            video, text: [B,E] L2-normalised embeddings of the local clips and their captions.
            logit_scale: scalar tensor, the (already clamped) 1/temperature, a model parameter.
            neg: [B,Nn,E] L2-normalised hard-negative captions of each clip (optional).
            neg_mask: bool [B,Nn], True for real negatives.
            gathered: optional (all videos, all texts) already gathered (:meth:`logits`).
        """
        v2t, t2v, labels = self.logits(video, text, logit_scale, neg, neg_mask, gathered)
        return (F.cross_entropy(v2t, labels) + F.cross_entropy(t2v, labels)) / 2


@torch.no_grad()
def hard_negative_margin(video: torch.Tensor, text: torch.Tensor, neg: torch.Tensor,
                         neg_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagnostic: (mean over clips with >= 1 negative of cos(v, positive) - max_k cos(v, negative_k),
    share of clips with >= 1 negative). The margin is 0 when no clip has a negative (then the share says so).

    video, text [B,E], neg [B,Nn,E] (all L2-normalised), neg_mask bool [B,Nn].
    """
    has = neg_mask.bool().any(dim=1)
    if neg.shape[1] == 0 or not bool(has.any()):
        zero = video.new_zeros((), dtype=torch.float32)
        return zero, zero
    pos = (video.float() * text.float()).sum(-1)
    best = _negative_logits(video.float(), neg.float(), neg_mask).amax(dim=1)
    return (pos - best)[has].mean(), has.float().mean()
