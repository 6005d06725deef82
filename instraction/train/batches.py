"""One worker's endless, resumable, timed stream of collated batches from its Ray Data split.

Each epoch iterates the split again (``iter_torch_batches``; the collate runs in Ray Data's prefetch threads),
keeps only full batches (every rank then takes the same number of steps per epoch: the splits are equal), and
the position ``(epoch, batch_in_epoch)`` is what a checkpoint stores. Resuming skips ``batch_in_epoch``
batches of that epoch; see ``checkpoint.py`` for the guarantee and its limits.

With ``cache`` (``data.worker_cache``, for splits that fit in a worker's memory) the split is read once, as
numpy rows not yet collated, and every epoch is a permutation of those rows seeded by (seed, rank, epoch),
collated in the training loop itself: no Ray Data iterator thread runs beside the step, and a resume starts at
its batch without reading anything twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


class BatchStream:
    """``for batch, wait_s in BatchStream(...)``: batches forever, each with the seconds spent waiting for it.

    Args:
        shard: the worker's ``ray.data.DataIterator`` (``ray.train.get_dataset_shard``).
        batch_size: rows per batch (``train.batch_size``).
        collate: numpy rows ``{column: array [B, ...]}`` -> model batch (the batch contract of docs/ARCHITECTURE.md).
        epoch, batch_in_epoch: the position to start from (0, 0 for a fresh run).
        prefetch: batches fetched and collated ahead in background threads.
        shuffle_buffer: rows of local shuffle (0: stream order); seeded by ``seed``, ``rank`` and the epoch.
        cache: read the split once into this process and draw each epoch as a seeded permutation of its rows
            (``prefetch`` and ``shuffle_buffer`` then do not apply); refused above ``cache_max_gib``.
    """

    def __init__(self, shard, batch_size: int, collate: Callable[[dict], Any], *, epoch: int = 0,
                 batch_in_epoch: int = 0, prefetch: int = 2, shuffle_buffer: int = 0, seed: int = 0, rank: int = 0,
                 cache: bool = False, cache_max_gib: float = 4.0):
        self.shard, self.batch_size = shard, batch_size
        self.raw_collate, self.collate = collate, _numpy_collate(collate)
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self.prefetch, self.shuffle_buffer, self.seed, self.rank = prefetch, shuffle_buffer, seed, rank
        self.cache, self.cache_max_gib = cache, cache_max_gib
        if cache and shuffle_buffer:
            log.warning("data.shuffle_buffer=%d does not apply with data.worker_cache: every epoch is a full "
                        "permutation of the cached split", shuffle_buffer)
        self.rows: dict[str, np.ndarray] | None = None
        self.resume_skip_s = 0.0
        """Seconds spent reading past the batches consumed before a resume."""
        self.cache_fill_s = 0.0
        """Seconds spent reading the split into the cache (``cache`` only)."""

    def fill_cache(self) -> None:
        """Read the whole split into the cache now (``cache`` only; iterating does it when not done yet)."""
        if self.cache and self.rows is None:
            self.rows = self._read_split()

    def _read_split(self) -> dict[str, np.ndarray]:
        """The whole split as numpy columns, read once; refused when its arrays outgrow ``cache_max_gib`` (while the
        columns are joined, the process briefly holds about twice that)."""
        start, parts, nbytes = time.perf_counter(), [], 0
        for part in self.shard.iter_batches(batch_size=256, batch_format="numpy", prefetch_batches=1):
            nbytes += sum(np.asarray(v).nbytes for v in part.values())
            if nbytes > self.cache_max_gib * 2**30:
                raise RuntimeError(f"rank {self.rank}: the data split outgrows the worker cache "
                                   f"(> {self.cache_max_gib} GiB, data.worker_cache_max_gib): turn data.worker_cache "
                                   "off to stream it, or raise the limit if the workers have the memory")
            parts.append(part)
        if not parts:
            return {}
        rows = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
        self.cache_fill_s = time.perf_counter() - start
        return rows

    def _cached_batches(self, epoch: int, first: int) -> Iterator[Any]:
        """Full batches of ``epoch``'s permutation of the cached rows, from batch ``first`` on."""
        self.fill_cache()
        n = len(next(iter(self.rows.values()))) if self.rows else 0
        if first > n // self.batch_size:
            raise RuntimeError(f"cannot resume at batch {first} of epoch {epoch}: the cached data split holds "
                               f"{n // self.batch_size} batches, fewer than when the checkpoint was written")
        order = np.random.default_rng((self.seed, self.rank, epoch)).permutation(n)
        for b in range(first, n // self.batch_size):
            picked = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.raw_collate({k: v[picked] for k, v in self.rows.items()})

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
            if self.cache:
                batches, skip = self._cached_batches(self.epoch, skip), 0
            else:
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
