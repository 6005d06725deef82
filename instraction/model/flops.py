"""Analytic FLOP count of one InstrAction training step, for throughput and MFU (model FLOPs utilisation).

Conventions (PaLM's MFU, Chowdhery et al. 2022, App. B): a matmul of [m,k] by [k,n] costs 2*m*k*n; only matmuls,
convolutions and attention products count (norms, softmax, elementwise work and soft-DTW's recursion do not); a
training step costs 3x the forward (the backward computes an input and a weight gradient per matmul). Every term
below follows the model's code (instraction/model/*.py, instraction/losses/*.py) module by module, so
``tests/test_flops.py`` can compare it with ``torch.utils.flop_counter.FlopCounterMode`` per module.

With C the tower width, h the MLP width, N tokens per row, R rows, a CLIP-style transformer layer costs
``2*R*N*(4*C*C + 2*C*h)`` in its projections and MLP plus ``4*R*N*N*C`` in attention (QK^T and PV).
"""

from __future__ import annotations

import torch

__all__ = ["forward_flops", "TRAIN_FACTOR"]

TRAIN_FACTOR = 3
"""Training FLOPs per forward FLOP: forward + backward (an input and a weight gradient per matmul)."""


def _transformer(rows: int, tokens: int, width: int, hidden: int, layers: int) -> int:
    return layers * (2 * rows * tokens * (4 * width * width + 2 * width * hidden) + 4 * rows * tokens * tokens * width)


def _hidden(width: int, ratio: float) -> int:
    return int(round(width * ratio))


def _video_tower(model, b: int, t: int) -> int:
    cfg = model.model_cfg.video
    tower = model.video
    if cfg.kind == "vit":
        p = tower.grid**2
        c = tower.width
        patch = 2 * b * t * p * 3 * tower.patch_size**2 * c
        return patch + _transformer(b, t * p + 1, c, _hidden(c, cfg.mlp_ratio), cfg.layers)
    # conv3d: each Conv3d costs 2 * output elements * (input channels * kernel volume); then the token MLP.
    total, size = 0, cfg.image_size
    for conv in (m for m in tower.stem if isinstance(m, torch.nn.Conv3d)):
        size = (size + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
        kernel = conv.kernel_size[0] * conv.kernel_size[1] * conv.kernel_size[2]
        total += 2 * b * t * size * size * conv.out_channels * conv.in_channels * kernel
    tokens = b * t * tower.grid**2
    return total + 2 * tokens * 2 * tower.width * _hidden(tower.width, cfg.mlp_ratio)


def _perceiver(model, b: int, queries: int, frames: int, keys_per_frame: int, visible_keys: int) -> int:
    """One perceiver pass: ``queries`` per clip, ``visible_keys`` summed over a clip's queries."""
    pc = model.model_cfg.perceiver
    c = model.perceiver.width
    h = _hidden(c, pc.mlp_ratio)
    n = frames * keys_per_frame
    per_layer = (2 * b * queries * c * c * 2  # q_proj, out_proj
                 + 2 * b * n * c * 2 * c  # kv_proj over every video token
                 + 4 * b * visible_keys * c  # QK^T and PV over the keys each query sees
                 + 2 * b * queries * 2 * c * h)  # MLP
    return pc.layers * per_layer


def forward_flops(model, batch: dict, banded: bool = True) -> dict[str, int]:
    """Forward FLOPs of ``model(batch)`` by component (keys are the model's submodule names) and ``total``.

    Args:
        model: an :class:`~instraction.model.instraction.InstrActionModel`.
        batch: a batch per the batch contract (only shapes, masks, counts and labels are read).
        banded: count the perceiver's student attention over the keys of each latent's band only (what the
            Triton kernel computes); False counts every key (the masked reference).
    """
    from instraction.kernels.banded_attention import band
    from instraction.losses.mam import IGNORE_INDEX

    cfg, loss = model.model_cfg, model.loss_cfg
    b, t = batch["video"].shape[:2]
    e, cv, ct = cfg.embed_dim, model.video.width, model.text.width
    p = model.video.grid**2
    tc = cfg.text
    th = _hidden(ct, tc.mlp_ratio)
    length = batch["text_ids"].shape[1]
    # on a GPU captions, negatives and verb phrases share one tower call, padded to the longest (model._encode_sets)
    shared = batch["text_ids"].is_cuda if model.share_text_call is None else model.share_text_call
    text_rows, text_length = b, length
    out = {"video": _video_tower(model, b, t), "text": 0,
           "video_proj": 0, "text_proj": 2 * b * ct * e, "verb_query": 0, "perceiver": 0, "decoder": 0,
           "contrastive_loss": 0, "distill_loss": 0, "dtw_loss": 0, "mam_head": 0}
    k = model.perceiver.num_latents
    if banded:
        lo, hi = band(k, t, model.perceiver.window)
        student_keys = int((hi - lo).sum()) * p
    else:
        student_keys = k * t * p
    out["perceiver"] += _perceiver(model, b, k, t, p, student_keys) + 2 * k * t * cv  # + latent_position
    out["video_proj"] += 2 * b * k * cv * e
    weights = {name: float(getattr(loss, f"{name}_weight")) for name in ("contrastive", "distill", "dtw", "mam")}

    if weights["contrastive"] > 0:
        nn_ = batch["neg_ids"].shape[1] if "neg_ids" in batch else 0
        if nn_:
            text_rows += int(batch["neg_mask"].bool().reshape(b, nn_, -1).any(-1).sum())
            text_length = max(text_length, batch["neg_ids"].shape[2])
            out["text_proj"] += 2 * b * nn_ * ct * e
            out["contrastive_loss"] += 2 * 2 * b * nn_ * e  # the loss's scores and the hn_margin diagnostic
        out["contrastive_loss"] += 2 * 2 * b * b * e

    if weights["distill"] > 0 or weights["dtw"] > 0:
        m, lv = batch["verb_ids"].shape[1:]
        verbs = int(batch["verb_count"].long().clamp(0, m).sum())
        if shared or lv == text_length:
            text_rows, text_length = text_rows + verbs, max(text_length, lv)
        else:
            out["text"] += _transformer(verbs, lv, ct, th, tc.layers)
        if weights["distill"] > 0:
            out["verb_query"] += 2 * b * m * ct * cv
            out["perceiver"] += _perceiver(model, b, m, t, p, m * t * p)  # teacher queries see every frame
            out["video_proj"] += 2 * b * m * cv * e
            out["distill_loss"] += 4 * 2 * b * b * e
        if weights["dtw"] > 0:
            out["text_proj"] += 2 * b * m * ct * e
            out["dtw_loss"] += 2 * b * k * m * e

    out["text"] += _transformer(text_rows, text_length, ct, th, tc.layers)
    if weights["mam"] > 0:
        dc = cfg.decoder
        dh = _hidden(ct, dc.mlp_ratio)
        per_layer = (2 * b * length * ct * 3 * ct + 4 * b * length * length * ct  # causal self-attention
                     + 2 * b * length * ct * ct * 3  # self_out, cross_q, cross_out
                     + 2 * b * k * cv * 2 * ct + 4 * b * length * k * ct  # cross_kv over S, cross-attention
                     + 2 * b * length * 2 * ct * dh)  # MLP
        out["decoder"] += dc.layers * per_layer
        targets = int((batch["mam_labels"][:, 1:] != IGNORE_INDEX).sum())
        out["mam_head"] += 2 * targets * ct * model.text.token_embedding.num_embeddings
    out["total"] = sum(out.values())
    return out
