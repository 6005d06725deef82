"""Loss weights and hyper-parameters (paper eq. 3-9)."""

from __future__ import annotations

from dataclasses import dataclass

from instraction.config_checks import check_choice, check_range


@dataclass
class LossConfig:
    contrastive_weight: float = 1.0
    """Video<->text InfoNCE with hard negatives (losses/contrastive.py). Total loss = sum of weight * term;
    a weight of 0 skips computing the term (it is reported as 0)."""
    distill_weight: float = 1.0
    """Verb-guided distillation, eq. 3-4 (losses/distill.py); 0 also skips the teacher stream."""
    dtw_weight: float = 0.1
    """DTW-Align, eq. 5-7 (losses/dtw_align.py)."""
    mam_weight: float = 0.5
    """Masked Action Modeling, eq. 9 (losses/mam.py); 0 also skips the decoder."""
    distill_alpha: float = 0.5
    """alpha of eq. 3: 0 is plain cross-entropy on the labels, 1 pure distillation from the teacher."""
    distill_teacher_weight: float = 1.0
    """Weight of the teacher stream's own InfoNCE inside distill_loss (its only learning signal: eq. 3's targets
    are detached; see losses/distill.py). 0 leaves the teacher to the shared weights' other gradients."""
    dtw_gamma: float = 0.1
    """Soft-DTW smoothing gamma (eq. 5)."""
    dtw_backend: str = "auto"
    """kernels.soft_dtw backend: auto (Triton on CUDA, torch elsewhere) | torch | triton."""
    dtw_margin: float = 0.1
    """delta of the order hinge (eq. 6)."""
    gather_with_grad: bool = True
    """Contrastive and distill across ranks (open_clip's gather): True lets gradients flow through the all-gather
    (exact global gradient); False treats other ranks' features as constants (cheaper, biased)."""
    mam_mask_prob: float = 1.0
    """Share of action tokens masked in the MAM caption."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.distill_alpha", self.distill_alpha, 0.0, 1.0)
        check_range(f"{path}.distill_teacher_weight", self.distill_teacher_weight, 0.0, None)
        check_range(f"{path}.dtw_margin", self.dtw_margin, 0.0, None)
        check_choice(f"{path}.dtw_backend", self.dtw_backend, ["auto", "torch", "triton"])
        check_range(f"{path}.dtw_gamma", self.dtw_gamma, 1e-4, None)
        for name in ("contrastive_weight", "distill_weight", "dtw_weight", "mam_weight"):
            check_range(f"{path}.{name}", getattr(self, name), 0.0, None)
