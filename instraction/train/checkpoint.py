"""Training state on disk: what a resumed run needs to continue as if it had never stopped.

A checkpoint directory (one per ``ray.train.report``; Ray Train merges the per-rank directories into one) holds

    state/                 DeepSpeed: module weights, each rank's ZeRO optimizer partition, client state
                           (LR scheduler, TrainState); written collectively by every rank
    worker_00000.pt ...    per rank: TrainState (step, data position) and the RNG states (python, numpy, torch)
    model.safetensors      final checkpoint only: full weights (ZeRO-3 parameters gathered)

Data-position guarantee: every worker counts the batches it has consumed in the current epoch of its own
Ray Data split. The splits are deterministic (``preserve_order``: Ray Data hands blocks to the split with the
fewest rows, in order) and the local shuffle is seeded by (seed, rank, epoch), so a resumed worker that skips
``batch_in_epoch`` batches of the same epoch sees exactly the samples it would have seen next: nothing is
repeated or skipped. Limits: it holds for the same data, world size and batch size; the skipped batches are
read and decoded again (Ray Data cannot seek); with a different world size (ZeRO stage 0 only: stages 1-3 save the
optimizer state partitioned for the world size that wrote it, and loading refuses) the run resumes from rank 0's
position with a warning, and the data order then differs from an uninterrupted run. With ``data.worker_cache`` an
epoch is a permutation seeded by (seed, rank, epoch) of the rows the worker read once, so a resume starts at its
batch without reading anything again; the same limits hold.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instraction.train.schedule import restore_position

log = logging.getLogger(__name__)

STATE_TAG = "state"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class TrainState:
    """Counters of one worker; all workers hold the same values except ``samples_seen``'s data."""

    step: int = 0
    """Training steps done (one batch each, skipped non-finite steps included)."""
    epoch: int = 0
    """Current pass over this worker's data split."""
    batch_in_epoch: int = 0
    """Batches of ``epoch`` already consumed: the data position a resumed worker skips to."""
    samples_seen: int = 0
    """Clips this worker has trained on (rows of its batches; reports sum it over ranks)."""
    skipped_nonfinite: int = 0
    """Steps skipped because the loss or the gradients were not finite (counted on every rank alike)."""
    consecutive_nonfinite: int = 0
    """Non-finite steps in a row (the run stops at ``train.max_consecutive_nonfinite``)."""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / f"worker_{rank:05d}.pt"


def save(engine, scheduler, state: TrainState, directory: str | Path, rank: int, world_size: int) -> None:
    """Write the full training state of this rank into ``directory`` (call on every rank: ZeRO is collective)."""
    client_state = {"scheduler": scheduler.state_dict(), "train_state": state.as_dict()}
    engine.save_checkpoint(str(directory), tag=STATE_TAG, client_state=client_state, save_latest=False)
    torch.save({"train_state": state.as_dict(), "rng": rng_state(), "world_size": world_size},
               worker_file(directory, rank))


def keep_kernel_choice(optimizer) -> None:
    """A loaded optimizer state brings the saving run's param-group options, among them torch's kernel choice
    (``fused`` / ``foreach``): put back this run's own (``engine.adamw`` decides where the fused kernel runs)."""
    if optimizer is None:
        return
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]


def load(engine, scheduler, directory: str | Path, rank: int, world_size: int) -> TrainState:
    """Restore model, optimizer, scheduler, this rank's TrainState and RNG from ``directory``.

    Raises ``RuntimeError`` (before DeepSpeed reads anything) when the checkpoint was written by another number of
    workers under ZeRO stage >= 1: each rank's file holds its partition of the optimizer state for that world size,
    and DeepSpeed would load the wrong slices (or fail deep inside). Stage 0 replicates the state: it resumes.
    """
    first = torch.load(worker_file(directory, 0), map_location="cpu", weights_only=False)  # rank 0's file
    saved_world = first.get("world_size")
    stage = engine.zero_optimization_stage()
    if saved_world is not None and saved_world != world_size and stage >= 1:
        raise RuntimeError(f"checkpoint {directory} was written by {saved_world} workers under ZeRO stage {stage}: its "
                           f"optimizer partitions cannot be loaded by {world_size}; resume with train.num_workers="
                           f"{saved_world}, or start a new run from its weights")
    path, client_state = engine.load_checkpoint(str(directory), tag=STATE_TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"no DeepSpeed state under {directory}/{STATE_TAG}")
    restore_position(scheduler, client_state["scheduler"])  # the step; the schedule is this run's config
    keep_kernel_choice(getattr(scheduler, "optimizer", None))
    own = worker_file(directory, rank)
    same_world = saved_world == world_size and own.exists()
    if not same_world:
        log.warning("checkpoint written by %s workers, resuming with %s: data position of rank 0 is used and the "
                    "sample order differs from an uninterrupted run", saved_world, world_size)
    saved = torch.load(own, map_location="cpu", weights_only=False) if same_world and rank != 0 else first
    if same_world:
        set_rng_state(saved["rng"])
    return TrainState(**saved["train_state"])


def export_weights(engine, path: str | Path, rank: int, metadata: dict[str, str] | None = None) -> None:
    """Write the full module weights to ``path`` (safetensors) from rank 0; call on every rank.

    Under ZeRO-3 each rank holds a slice of every parameter: ``GatheredParameters`` assembles them for the
    duration of the export (a no-op for stages 0-2, whose ranks hold full weights).
    """
    import deepspeed
    from safetensors.torch import save_file

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if rank == 0:
            # clone: tied weights would otherwise share storage, which safetensors refuses
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in engine.module.state_dict().items()}
            tmp = f"{path}.tmp"
            save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})})
            os.replace(tmp, path)
