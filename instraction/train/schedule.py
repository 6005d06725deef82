"""Learning-rate schedule: linear warmup, then cosine decay to a floor (SGDR / CLIP-style, no restarts).

The multiplier is a pure function of the step, so a resumed run gets exactly the rate it would have had.
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """``lr(step) = peak * m(step)`` with

        m(s) = (s + 1) / warmup                                        for s < warmup
        m(s) = floor + (1 - floor) * (1 + cos(pi * p)) / 2,  p = (s - warmup) / (total - warmup)   otherwise

    p is clamped to [0, 1], so steps past ``total`` stay at the floor. A callable object (not a lambda), so a
    ``LambdaLR`` holding it can be checkpointed.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :class:`WarmupCosine`; step it once per training step (skipped steps included)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_ratio))


def restore_position(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict) -> None:
    """Move a scheduler built from this run's config to the step a checkpoint's ``state_dict()`` was taken at.

    Only the step comes from the checkpoint: the schedule itself (peak lr, warmup, total steps, floor) is this run's.
    ``LambdaLR.load_state_dict`` would also restore the saved ``WarmupCosine`` attributes and base rates, so a run
    resumed with a larger ``max_steps`` (or another lr) would keep the old schedule - at its floor, past the old end.
    The optimizer's rates are set for the restored step, as ``step()`` would have left them.
    """
    scheduler.last_epoch = int(state["last_epoch"])
    scheduler._step_count = int(state.get("_step_count", scheduler.last_epoch + 1))
    rates = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, base, rate in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, rates):
        group["lr"], group["initial_lr"] = rate, base
    scheduler._last_lr = rates
