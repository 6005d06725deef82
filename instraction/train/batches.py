"""One worker's endless, resumable, timed stream of collated batches from its Ray Data split.

Each epoch iterates the split again (``iter_torch_batches``; the collate runs in Ray Data's prefetch threads),
keeps only full batches (every rank then takes the same number of steps per epoch: the splits are equal), and
the position ``(epoch, batch_in_epoch)`` is what a checkpoint stores. Resuming skips ``batch_in_epoch``
batches of that epoch; see ``checkpoint.py`` for the guarantee and its limits.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import torch


class BatchStream:
    """``for batch, wait_s in BatchStream(...)``: batches forever, each with the seconds spent waiting for it.

    Args:
        shard: the worker's ``ray.data.DataIterator`` (``ray.train.get_dataset_shard``).
        batch_size: rows per batch (``train.batch_size``).
        collate: numpy rows ``{column: array [B, ...]}`` -> model batch (the batch contract of docs/ARCHITECTURE.md).
        epoch, batch_in_epoch: the position to start from (0, 0 for a fresh run).
        prefetch: batches fetched and collated ahead in background threads.
        shuffle_buffer: rows of local shuffle (0: stream order); seeded by ``seed``, ``rank`` and the epoch.
    """

    def __init__(self, shard, batch_size: int, collate: Callable[[dict], Any], *, epoch: int = 0,
                 batch_in_epoch: int = 0, prefetch: int = 2, shuffle_buffer: int = 0, seed: int = 0, rank: int = 0):
        self.shard, self.batch_size, self.collate = shard, batch_size, _numpy_collate(collate)
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self.prefetch, self.shuffle_buffer, self.seed, self.rank = prefetch, shuffle_buffer, seed, rank
        self.resume_skip_s = 0.0
        """Seconds spent reading past the batches consumed before a resume."""

    def _epoch_batches(self, epoch: int) -> Iterator[Any]:
        shuffle = {}
        if self.shuffle_buffer > 0:
            shuffle = {"local_shuffle_buffer_size": self.shuffle_buffer,
                       "local_shuffle_seed": (self.seed * 1_000_003 + self.rank * 10_007 + epoch) % 2**31}
        return iter(self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=self.collate,
                                                  drop_last=True, prefetch_batches=self.prefetch, **shuffle))

    def __iter__(self) -> Iterator[tuple[Any, float]]:
        skip = self.batch_in_epoch
        while True:
            batches = self._epoch_batches(self.epoch)
            if skip:
                start = time.perf_counter()
                for _ in range(skip):
                    if next(batches, None) is None:
                        raise RuntimeError(f"cannot resume at batch {skip} of epoch {self.epoch}: the data split "
                                           "is shorter than when the checkpoint was written")
                self.resume_skip_s = time.perf_counter() - start
                skip = 0
            produced = self.batch_in_epoch
            while True:
                start = time.perf_counter()
                batch = next(batches, None)
                wait = time.perf_counter() - start
                if batch is None:
                    break
                produced += 1
                self.batch_in_epoch += 1
                yield batch, wait
            if produced == 0:
                raise RuntimeError(f"rank {self.rank}: epoch {self.epoch} of the data split yielded no full batch of "
                                   f"{self.batch_size} rows (dataset smaller than batch_size x num_workers?)")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


def _numpy_collate(fn: Callable[[dict], Any]):
    """Ray Data (>= 2.47) wants a ``NumpyBatchCollateFn`` instance; a plain function is wrapped in one."""
    from ray.data.collate_fn import CollateFn, NumpyBatchCollateFn

    if isinstance(fn, CollateFn):
        return fn

    class _Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict) -> Any:
            return fn(batch)

    return _Collate()


def to_device(batch: Any, device: torch.device, float_dtype: torch.dtype = torch.float32) -> Any:
    """Move every tensor of a (nested) batch to ``device``; floating tensors are cast to the engine's dtype."""
    if torch.is_tensor(batch):
        if batch.is_floating_point():
            return batch.to(device=device, dtype=float_dtype, non_blocking=True)
        return batch.to(device=device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device, float_dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return type(batch)(to_device(v, device, float_dtype) for v in batch)
    return batch
