"""InstrAction (paper Sec. 4, Fig. 3): backbone towers + Action Perceiver + MAM decoder, trained with four losses.

    video [B,T,3,H,W] --video tower--> tokens V [B,T,P,Cv] --Perceiver (banded latents)--> S [B,K,Cv]  (eq. 1)
    verb phrases [B,M,Lv] --text tower--> P [B,M,Ct] --Linear--> queries --Perceiver (all frames)--> T [B,M,Cv]  (eq. 2)
    caption [B,L] --text tower--> t [B,Ct]           masked caption + S --decoder--> next-token logits  (eq. 8)

Embeddings (joint space, E = embed_dim, L2-normalised):
* video: the K student action tokens video_proj(S) pooled by ``model.video_pool``: their mean (the paper's
  average) or their per-dimension max (the embedded default: an action one latent sees is not diluted by the
  K-1 others). Verb phrases do not exist at inference, and the student is exactly what the distillation
  (eq. 3-4) trains to stand alone, so retrieval uses it.
* teacher video: mean over the real verb phrases of video_proj(T) (distillation target).
* text / negatives / verb phrases: text_proj(pooled text state).

``forward(batch)`` returns the four unweighted ``*_loss`` terms, ``loss`` = their config-weighted sum (a term of
weight 0 is not computed, reported as 0) and detached diagnostics. The model is written for one device; when
torch.distributed is initialised, the contrastive and distillation losses compare against the global batch, and
``forward`` all-gathers their clip, caption and teacher embeddings once for both (``losses.distill.gather_for_both``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from instraction.losses.config import LossConfig
from instraction.losses.contrastive import ContrastiveLoss, hard_negative_margin
from instraction.losses.distill import DistillLoss, gather_for_both
from instraction.losses.dtw_align import DTWAlignLoss
from instraction.losses.mam import IGNORE_INDEX, mam_loss_from_hidden
from instraction.model.backbone import build_text_tower, build_video_tower
from instraction.model.config import ModelConfig
from instraction.model.decoder import MultimodalDecoder
from instraction.model.loaders import load_pretrained
from instraction.model.perceiver import ActionPerceiver

__all__ = ["InstrActionModel", "build_model", "LOSS_TERMS"]

LOSS_TERMS = ("contrastive", "distill", "dtw", "mam")


def autocast_off(device_type: str):
    """Autocast disabled for ``device_type`` (a no-op context where it has no autocast, e.g. ``meta``)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class JointProjection(nn.Linear):
    """``nn.Linear`` into the joint space that computes in its weights' dtype under autocast: the embeddings every
    loss and the bench compare stay fp32 in a bf16-mixed run (a tiny matmul; the towers before it run in bf16).
    Parameter names are nn.Linear's, so checkpoints load as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_off(x.device.type):
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


class InstrActionModel(nn.Module):
    share_text_call: Optional[bool] = None
    """One text-tower call for captions, negatives and verb phrases (True), one per length (False), or by device
    (None: shared on CUDA); see :meth:`_encode_sets`."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, vocab_size: int):
        super().__init__()
        self.model_cfg, self.loss_cfg = model_cfg, loss_cfg
        self.video = build_video_tower(model_cfg.video)
        self.text = build_text_tower(model_cfg.text, vocab_size)
        cv, ct, e = self.video.width, self.text.width, model_cfg.embed_dim
        pc = model_cfg.perceiver
        self.perceiver = ActionPerceiver(cv, pc.num_latents, model_cfg.video.num_frames, pc.layers, pc.heads,
                                         pc.mlp_ratio, pc.window, pc.attention_backend)
        self.verb_query = nn.Linear(ct, cv)  # verb-phrase text state -> teacher query at the perceiver's width
        # No bias: padded teacher tokens (zeroed by query_mask) project to 0, so a sum over verbs is a masked sum.
        self.video_proj = JointProjection(cv, e, bias=False)
        self.text_proj = JointProjection(ct, e, bias=False)
        dc = model_cfg.decoder
        self.decoder = MultimodalDecoder(self.text.token_embedding, model_cfg.text.context_length, cv, dc.layers,
                                         dc.heads, dc.mlp_ratio)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / model_cfg.init_temperature)))
        self.contrastive_loss = ContrastiveLoss(loss_cfg.gather_with_grad)
        self.distill_loss = DistillLoss(loss_cfg.distill_alpha, loss_cfg.gather_with_grad)
        self.dtw_loss = DTWAlignLoss(loss_cfg.dtw_gamma, loss_cfg.dtw_margin, loss_cfg.dtw_backend)
        self.pretrained_report: Optional[dict] = None
        if model_cfg.pretrained.path:
            self.pretrained_report = load_pretrained(model_cfg.pretrained, self.video, self.text)
            self._init_projections_from_towers()

    @torch.no_grad()
    def _init_projections_from_towers(self) -> None:
        """A CLIP/ViCLIP checkpoint carries projections into its joint space ([C, output_dim]); when output_dim
        equals embed_dim, start ours from them so the pretrained text space is kept from step 0."""
        pairs = ((self.video_proj, self.video, "proj"), (self.text_proj, self.text, "text_projection"))
        for ours, tower, name in pairs:
            weight = getattr(tower, name, None)
            if weight is not None and tuple(weight.shape) == (ours.in_features, ours.out_features):
                ours.weight.copy_(weight.t())

    # ------------------------------------------------------------------------------------------------ encoders
    def scale(self) -> torch.Tensor:
        """The logit scale 1/temperature, clamped to model.max_logit_scale (CLIP): scalar tensor."""
        return self.logit_scale.clamp(max=math.log(self.model_cfg.max_logit_scale)).exp()

    def _student(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B,T,3,H,W] -> (backbone tokens [B,T,P,Cv], student action tokens S [B,K,Cv])."""
        tokens, _ = self.video(video)
        return tokens, self.perceiver(tokens)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids long [B,L], mask bool [B,L] -> [B,E] L2-normalised."""
        _, pooled = self.text(ids, mask)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """video [B,T,3,H,W] -> [B,E] L2-normalised: the projected student action tokens, pooled (``pool``)."""
        _, s = self._student(video)
        return self.pool(self.video_proj(s))

    def pool(self, s_proj: torch.Tensor) -> torch.Tensor:
        """Projected student tokens [B,K,E] -> clip embedding [B,E], L2-normalised (model.video_pool)."""
        pooled = s_proj.amax(dim=1) if self.model_cfg.video_pool == "max" else s_proj.mean(dim=1)
        return F.normalize(pooled, dim=-1)

    def action_tokens(self, video: torch.Tensor) -> torch.Tensor:
        """video [B,T,3,H,W] -> [B,K,E]: the K student action tokens, projected and L2-normalised, in time order."""
        _, s = self._student(video)
        return F.normalize(self.video_proj(s), dim=-1)

    def frame_embeddings(self, video: torch.Tensor) -> torch.Tensor:
        """video [B,T,3,H,W] -> [B,T,E]: raw backbone tokens mean-pooled per frame, projected and L2-normalised
        (the paper's raw-embedding baseline of Fig. 7/8, through the same projection as the action tokens)."""
        tokens, _ = self.video(video)
        return F.normalize(self.video_proj(tokens.mean(dim=2)), dim=-1)

    def _encode_rows(self, ids: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Text-tower pooled states of the valid rows only: ids/mask [B,N,L], valid bool [B,N] -> [B,N,Ct]
        (zeros elsewhere). Padding rows (absent negatives / verbs) cost nothing."""
        (pooled,) = self._encode_sets([_valid_rows(ids, mask, valid)])
        return _scatter_rows(pooled, valid, self.text.width)

    def _encode_sets(self, sets: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Pooled text states of several row sets (ids/mask [R_i, L_i]) -> [R_i, Ct] each, with as few text-tower
        calls as pays: on a GPU one call for all (right-padded to the longest set: the tower is launch-bound there,
        README "Paper scale on a GPU"), elsewhere one call per distinct length (compute-bound: no padding work).
        Padding is masked, so each row's state is what a call of its own gives."""
        share = sets[0][0].is_cuda if self.share_text_call is None else self.share_text_call
        groups: dict[int, list[int]] = {}
        for i, (ids, _) in enumerate(sets):
            groups.setdefault(0 if share else ids.shape[1], []).append(i)
        pooled: list = [None] * len(sets)
        for members in groups.values():
            length = max(sets[i][0].shape[1] for i in members)
            ids = torch.cat([F.pad(sets[i][0], (0, length - sets[i][0].shape[1])) for i in members])
            mask = torch.cat([F.pad(sets[i][1].bool(), (0, length - sets[i][1].shape[1])) for i in members])
            if ids.shape[0]:
                parts = self.text(ids, mask)[1].split([sets[i][0].shape[0] for i in members])
            else:
                empty = ids.new_zeros((0, self.text.width), dtype=self.text.token_embedding.weight.dtype)
                parts = [empty] * len(members)
            for i, part in zip(members, parts):
                pooled[i] = part
        return pooled

    # ------------------------------------------------------------------------------------------------- forward
    def forward(self, batch: dict) -> dict:
        """batch per the batch contract (docs/ARCHITECTURE.md) -> dict of 0-dim tensors:
        contrastive_loss, distill_loss, dtw_loss, mam_loss (unweighted), loss (weighted sum), and detached
        diagnostics: logit_scale, hn_margin, hn_fraction, distill_student, distill_teacher_ce, teacher_fraction,
        dtw_align, dtw_order, dtw_fraction, mam_tokens."""
        cfg = self.loss_cfg
        weights = {name: float(getattr(cfg, f"{name}_weight")) for name in LOSS_TERMS}
        tokens, s = self._student(batch["video"])
        s_proj = self.video_proj(s)  # [B,K,E]
        video_emb = self.pool(s_proj)
        scale = self.scale()

        # every text the step needs, through one text-tower call (_encode_sets)
        sets = [(batch["text_ids"], batch["text_mask"])]
        use_negatives = weights["contrastive"] > 0 and "neg_ids" in batch and batch["neg_ids"].shape[1] > 0
        if use_negatives:
            neg_tokens, neg_mask = negative_masks(batch)
            sets.append(_valid_rows(batch["neg_ids"], neg_tokens, neg_mask))
        use_verbs = weights["distill"] > 0 or weights["dtw"] > 0
        if use_verbs:
            verb_count = batch["verb_count"].long().clamp(0, batch["verb_ids"].shape[1])
            slots = torch.arange(batch["verb_ids"].shape[1], device=verb_count.device)
            verb_valid = slots[None, :] < verb_count[:, None]  # [B,M]
            sets.append(_valid_rows(batch["verb_ids"], batch["verb_mask"], verb_valid))
        pooled = self._encode_sets(sets)
        text_emb = F.normalize(self.text_proj(pooled[0]), dim=-1)
        zero = video_emb.new_zeros(())
        out: dict = {f"{name}_loss": zero for name in LOSS_TERMS}
        diag: dict = {"logit_scale": scale}

        verb_state = t_emb = has_teacher = None
        if use_verbs:
            verb_state = _scatter_rows(pooled[-1], verb_valid, self.text.width)  # [B,M,Ct]
        if weights["distill"] > 0:
            teacher = self.perceiver(tokens, queries=self.verb_query(verb_state), query_mask=verb_valid)
            t_proj = self.video_proj(teacher)  # zeros at padded verbs (query_mask)
            t_emb = F.normalize(t_proj.sum(1) / verb_count.clamp(min=1)[:, None].to(t_proj.dtype), dim=-1)
            has_teacher = verb_count > 0
        neg = verb_emb = None
        if weights["contrastive"] > 0 and use_negatives:
            neg = F.normalize(self.text_proj(_scatter_rows(pooled[1], neg_mask, self.text.width)), dim=-1)
        if weights["dtw"] > 0:
            verb_emb = self.text_proj(verb_state)
        # The losses (softmaxes over the global batch and the negatives, soft-DTW) run in fp32 under autocast: a
        # bf16 logit at temperature 0.07 is off by up to ~0.05, the size of a hard negative's margin late in training.
        with autocast_off(video_emb.device.type):
            # Both losses compare the global batch's clips and captions: one all-gather for all their features
            gathered = {}
            if weights["contrastive"] > 0 and t_emb is not None:
                gathered = gather_for_both(video_emb, text_emb, t_emb, has_teacher, cfg.gather_with_grad)
            if weights["contrastive"] > 0:
                out["contrastive_loss"] = self.contrastive_loss(video_emb, text_emb, scale, neg,
                                                                neg_mask if use_negatives else None,
                                                                gathered.get("contrastive"))
                if neg is not None:
                    diag["hn_margin"], diag["hn_fraction"] = hard_negative_margin(video_emb, text_emb, neg, neg_mask)
            if weights["distill"] > 0:
                student, teacher_ce = self.distill_loss.terms(video_emb, t_emb, text_emb, scale, has_teacher,
                                                              gathered.get("distill"))
                out["distill_loss"] = student + cfg.distill_teacher_weight * teacher_ce
                diag.update(distill_student=student, distill_teacher_ce=teacher_ce,
                            teacher_fraction=has_teacher.float().mean())
            if weights["dtw"] > 0:
                align, order, valid = self.dtw_loss.terms(s_proj, verb_emb, verb_count)
                w = valid.to(align.dtype)
                n = w.sum().clamp(min=1.0)
                out["dtw_loss"] = ((align + order) * w).sum() / n
                diag.update(dtw_align=(align * w).sum() / n, dtw_order=(order * w).sum() / n,
                            dtw_fraction=valid.float().mean())

        if weights["mam"] > 0:
            # mam_ids is the caption with its action tokens masked: same length and padding as text_ids.
            hidden = self.decoder(batch["mam_ids"], batch["text_mask"], s)
            out["mam_loss"] = mam_loss_from_hidden(hidden, batch["mam_labels"], self.decoder.lm_head)
            diag["mam_tokens"] = (batch["mam_labels"][:, 1:] != IGNORE_INDEX).sum().float()

        out["loss"] = sum(weights[name] * out[f"{name}_loss"] for name in LOSS_TERMS if weights[name] > 0)
        if not torch.is_tensor(out["loss"]):  # every weight 0: nothing to train, still a tensor
            out["loss"] = zero
        out.update({k: v.detach() for k, v in diag.items()})
        return out


def _valid_rows(ids: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids/mask [B,N,L], valid bool [B,N] -> the valid rows' (ids, mask) [R,L], row-major."""
    length = ids.shape[-1]
    flat = valid.reshape(-1)
    return ids.reshape(-1, length)[flat], mask.reshape(-1, length)[flat]


def _scatter_rows(pooled: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
    """pooled [R,C] of the valid rows -> [B,N,C] with zeros at the invalid ones (inverse of _valid_rows)."""
    b, n = valid.shape
    out = pooled.new_zeros((b * n, width))
    out = out.index_put((valid.reshape(-1).nonzero(as_tuple=True)[0],), pooled)
    return out.reshape(b, n, width)


def negative_masks(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(token mask bool [B,Nn,L], real-negative mask bool [B,Nn]) of the hard negatives.

    The batch contract gives ``neg_mask`` [B,Nn] (which negatives are real) and no token mask. A collate that
    also provides ``neg_token_mask`` [B,Nn,L] (or a 3-D ``neg_mask``) is used as is. Otherwise the token mask
    is ``neg_ids != pad``, pad read from the padding the batch shows (padding rows are all pad, contract);
    when pad doubles as the end token (HF CLIP: pad = <|endoftext|>, seen as a caption's last real token being
    pad) the first pad of each row is kept as that row's end token, so negatives pool like captions do.
    """
    ids, row_or_token = batch["neg_ids"], batch["neg_mask"].bool()
    token = batch.get("neg_token_mask")
    if token is None and row_or_token.ndim == 3:
        token = row_or_token
    if token is not None:
        token = token.bool()
        return token, (row_or_token if row_or_token.ndim == 2 else token.any(-1))
    rows = row_or_token
    text_ids, text_mask = batch["text_ids"], batch["text_mask"].bool()
    pads = torch.cat([ids[~rows].reshape(-1), text_ids[~text_mask]])
    if pads.numel() == 0:  # no padding anywhere in the batch: every token is real
        return torch.ones_like(ids, dtype=torch.bool), rows
    pad = pads[0]
    token = ids != pad
    lengths = text_mask.sum(-1)
    padded = lengths < text_mask.shape[1]
    if bool(padded.any()):
        row = int(padded.nonzero()[0, 0])
        if int(text_ids[row, int(lengths[row]) - 1]) == int(pad):  # pad is also the end token
            first_pad = token.long().cumsum(-1).eq(token.sum(-1, keepdim=True)) & ~token
            first_pad &= first_pad.long().cumsum(-1).eq(1)
            token = token | first_pad
    return token & rows[..., None], rows


def build_model(cfg, vocab_size: int) -> InstrActionModel:
    """InstrActionModel from a run :class:`instraction.config.Config` (model + loss sections), checking that the
    data shapes fit the model (frames for the temporal embeddings, text length for the positions)."""
    m = cfg.model
    if cfg.data.max_text_len > m.text.context_length:
        raise ValueError(f"data.max_text_len={cfg.data.max_text_len} exceeds "
                         f"model.text.context_length={m.text.context_length}")
    if cfg.data.size != m.video.image_size:
        raise ValueError(f"data.size={cfg.data.size} differs from model.video.image_size={m.video.image_size}")
    return InstrActionModel(m, cfg.loss, vocab_size)
