"""InstrAction's training objectives, one per file, each naming its paper equation and tensor shapes.

    ContrastiveLoss   video<->text InfoNCE + hard negatives, local loss across ranks   (Sec. 3-4)   contrastive.py
    DistillLoss       verb-guided soft contrastive distillation                         (eq. 3-4)    distill.py
    DTWAlignLoss      soft-DTW action/verb alignment + order hinge                      (eq. 5-7)    dtw_align.py
    mam_loss          masked action modeling, next-token cross-entropy                  (eq. 9)      mam.py

Names are resolved lazily: ``instraction.config`` imports ``instraction.losses.config``, and loading a config
must not import torch or the kernels.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LossConfig": "config",
    "ContrastiveLoss": "contrastive",
    "gather_features": "contrastive",
    "gather_many": "contrastive",
    "hard_negative_margin": "contrastive",
    "rank_and_world": "contrastive",
    "DistillLoss": "distill",
    "gather_for_both": "distill",
    "soft_cross_entropy": "distill",
    "DTWAlignLoss": "dtw_align",
    "alignment_cost": "dtw_align",
    "reverse_verbs_index": "dtw_align",
    "IGNORE_INDEX": "mam",
    "mam_loss": "mam",
    "mam_loss_from_hidden": "mam",
    "next_token_targets": "mam",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
