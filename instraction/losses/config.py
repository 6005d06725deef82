"""Loss weights and hyper-parameters (paper eq. 3-9)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LossConfig:
    contrastive_weight: float = 1.0
    distill_weight: float = 1.0
    dtw_weight: float = 0.1
    mam_weight: float = 0.5
    """Total loss = sum of weight * term; a weight of 0 skips computing the term."""
    distill_alpha: float = 0.5
    """alpha of eq. 3: 0 is plain cross-entropy on the labels, 1 pure distillation from the teacher."""
    dtw_gamma: float = 0.1
    """Soft-DTW smoothing gamma (eq. 5)."""
    dtw_margin: float = 0.1
    """delta of the order hinge (eq. 6)."""
    gather_with_grad: bool = True
    """Contrastive across ranks: gather features with gradient and compute a local loss (open_clip style)."""
    mam_mask_prob: float = 1.0
    """Share of action tokens masked in the MAM caption."""

    def validate(self, path: str) -> None:
        from instraction.config import check_range

        check_range(f"{path}.distill_alpha", self.distill_alpha, 0.0, 1.0)
        check_range(f"{path}.dtw_gamma", self.dtw_gamma, 1e-4, None)
        for name in ("contrastive_weight", "distill_weight", "dtw_weight", "mam_weight"):
            check_range(f"{path}.{name}", getattr(self, name), 0.0, None)
