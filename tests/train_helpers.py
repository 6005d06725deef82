"""Shared setup of the training tests and the training benchmark: tiny configs, a toy model and toy rows.

The toy model follows the model contract (``forward(batch) -> {"loss", "*_loss", diagnostics}``) on a learnable
task, so the distributed machinery (DeepSpeed, Ray Train, checkpoints, MLflow) is tested in seconds; the real
model + Ray Data pipeline are exercised by test_train_synthkitchen.py.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from instraction.config import load_config

FEATURES, CLASSES = 16, 4
TINY_OVERRIDES = [
    "model.video.width=16", "model.video.layers=2", "model.video.patch_size=4", "model.video.image_size=16", "model.video.num_frames=4",
    "model.text.width=16", "model.text.layers=1", "model.embed_dim=16", "data.num_frames=4", "data.size=16",
    "train.batch_size=4", "train.num_workers=2", "train.warmup_steps=2", "train.lr=0.01",
]
# A SynthKitchen of 36 16-px clips for whole-job tests (seconds to render); up to 3 actions per clip, so the bench
# has Logic items (bench.logic_min_actions = 3).
TINY_DATA = [
    "data.synthetic.num_shards=3", "data.synthetic.clips_per_shard=12", "data.synthetic.size=16", "data.synthetic.slots=4",
    "data.synthetic.max_actions=3", "data.synthetic.min_action_slots=1", "data.synthetic.max_action_slots=2",
]


def tiny_config(tmp_path, *overrides: str):
    """A run config whose run.dir (and so the MLflow SQLite store) lives under ``tmp_path``."""
    return load_config(None, [*TINY_OVERRIDES, f"run.dir={tmp_path}", *overrides])


class ToyModel(nn.Module):
    """x [B,F] -> class logits; ``cls_loss`` (cross-entropy) + ``reg_loss`` (weight 0.1 of an L2 on the logits).

    A row with ``bad_grad`` set adds ``sqrt(0 * temperature)``: the loss stays finite, its gradient is NaN.
    """

    def __init__(self, cfg=None, vocab_size: int = 0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 32), nn.GELU(), nn.Linear(32, CLASSES))
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, batch: dict) -> dict:
        logits = self.net(batch["x"]) * self.temperature
        out = {"cls_loss": nn.functional.cross_entropy(logits.float(), batch["y"]),
               "reg_loss": logits.float().pow(2).mean()}
        out["loss"] = out["cls_loss"] + 0.1 * out["reg_loss"]
        if bool(batch["bad_grad"].any()):
            out["loss"] = out["loss"] + torch.sqrt(torch.zeros(()) * self.temperature.float())
        out["accuracy"] = (logits.argmax(-1) == batch["y"]).float().mean().detach()
        return out


def toy_model_builder(cfg, vocab_size: int) -> nn.Module:
    return ToyModel(cfg, vocab_size)


def toy_rows(n: int, seed: int = 0, poison: tuple[int, ...] = (), bad_grad: tuple[int, ...] = ()) -> list[dict]:
    """Linearly separable rows {"id", "x" float32 [F], "y", "bad_grad"}; rows whose id is in ``poison`` carry a
    NaN feature (non-finite loss), rows in ``bad_grad`` a finite loss with a NaN gradient."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32) * 2
    rows = []
    for i in range(n):
        y = int(rng.integers(CLASSES))
        x = (centers[y] + rng.normal(size=FEATURES)).astype(np.float32)
        if i in poison:
            x[0] = np.nan
        rows.append({"id": i, "x": x, "y": y, "bad_grad": i in bad_grad})
    return rows


def toy_collate(rows: dict) -> dict:
    """numpy rows -> {"x" float [B,F], "y" long [B], "id" long [B], "bad_grad" bool [B]}."""
    return {"x": torch.tensor(np.stack(rows["x"])), "y": torch.tensor(rows["y"]).long(),
            "id": torch.tensor(rows["id"]).long(), "bad_grad": torch.tensor(rows["bad_grad"]).bool()}


def toy_dataset(n: int = 64, seed: int = 0, poison: tuple[int, ...] = (), bad_grad: tuple[int, ...] = ()):
    import ray.data

    return ray.data.from_items(toy_rows(n, seed, poison, bad_grad))


def sum_on_ranks(rank: int, counts: list[int], port: int, out_dir: str) -> None:
    """torch.multiprocessing.spawn target: rank ``rank`` of a gloo group sums ``counts[rank]`` with
    ``instraction.train.loop.sum_over_ranks`` and writes what it got to ``out_dir/<rank>``."""
    import os

    import torch.distributed as dist

    from instraction.train.loop import sum_over_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(counts))
    try:
        total = sum_over_ranks(counts[rank], torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, str(rank)), "w") as f:
        f.write(str(total))


def short_on_rank1_collate(rows: dict) -> dict:
    """``toy_collate`` that drops the last row on rank 1: a worker that trains on fewer clips than the others."""
    import ray.train

    batch = toy_collate(rows)
    if ray.train.get_context().get_world_rank() == 1:
        batch = {key: value[:-1] for key, value in batch.items()}
    return batch


def precision_on_ranks(rank: int, natives: list[bool], port: int, out_dir: str) -> None:
    """torch.multiprocessing.spawn target: rank ``rank`` of a gloo group whose CPU has bf16 units iff
    ``natives[rank]`` resolves ``train.precision=auto`` with ``instraction.train.loop.agreed_precision`` and writes
    the precision it got to ``out_dir/<rank>``."""
    import os

    import torch.distributed as dist

    from instraction.train import loop

    loop.native_bf16 = lambda use_gpu: natives[rank]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(natives))
    try:
        got = loop.agreed_precision(load_config(None, ["train.precision=auto"]).train, torch.device("cpu")).precision
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, str(rank)), "w") as f:
        f.write(got)


class RecordSteps:
    """``after_step`` that appends (rank's pid, step, the worker's MALLOC_MMAP_THRESHOLD_) to a file."""

    def __init__(self, path):
        self.path = str(path)

    def __call__(self, step: int) -> None:
        import os

        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {step} {os.environ.get('MALLOC_MMAP_THRESHOLD_')}\n")
