"""The per-worker training loop: Ray Train places the workers, DeepSpeed wraps the single-device model.

``train_loop_per_worker`` runs in every Ray Train worker (``launch.py`` builds the TorchTrainer). Each step:
one batch from the worker's Ray Data split -> forward (config-weighted ``loss`` + every ``*_loss``) -> losses
averaged over ranks -> backward + clipped AdamW step through DeepSpeed, skipped and counted when the loss or
the gradients are not finite -> warmup+cosine LR. Every ``train.log_every`` steps rank 0 sends the metrics to
MLflow; every ``train.checkpoint_every`` steps every rank saves its share of the state and
``ray.train.report`` registers the checkpoint (a barrier across ranks). ``ray.train.report`` blocks for up to
the controller's poll interval, so it runs only with checkpoints and every ``train.report_every`` steps.

Seeds: the model is initialised from ``run.seed`` on every rank (DeepSpeed also broadcasts rank 0's weights);
per-rank randomness (dropout, masking, shuffle) uses ``run.seed + rank``; a resume restores the RNG states.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from instraction.config import from_yaml
from instraction.train import checkpoint as ckpt
from instraction.train.batches import BatchStream, to_device
from instraction.train.engine import (build_engine, clip_plain_gradients, deepspeed_config, floating_dtype, is_plain,
                                     native_bf16, resolve_precision)
from instraction.train.schedule import build_scheduler

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` is built by :func:`instraction.train.launch.loop_config`."""
    trainer = Trainer(loop_config)
    try:
        trainer.train()
    finally:  # a failing worker still delivers the metrics it logged
        if trainer.metric_logger:
            trainer.metric_logger.close()


def _default_model_builder(cfg, vocab_size: int) -> torch.nn.Module:
    from instraction.model.instraction import build_model

    return build_model(cfg, vocab_size)


def _default_collate(cfg, rank: int = 0, step: int = 0) -> Callable[[dict], dict]:
    """The training collate: contract tensors, clips augmented per data.augment with a stream of its own per
    (seed, rank, starting step), so ranks differ and a resumed run does not replay the first transforms."""
    from instraction.data.examples import Collate

    return Collate(cfg.data, include_keys=False, augment_seed=(cfg.run.seed, rank, step))


class Trainer:
    def __init__(self, loop_config: dict[str, Any]):
        import ray.train
        import ray.train.torch

        started = time.perf_counter()
        self.cfg = cfg = from_yaml(loop_config["config_yaml"])
        self.run_dir = loop_config["run_dir"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
        cfg.train = agreed_precision(cfg.train, self.device)  # what this run trains in, reported as bf16_autocast
        torch.set_num_threads(worker_threads(cfg.train.cpus_per_worker))

        from instraction.data.tokenizer import build_tokenizer

        ckpt.seed_everything(cfg.run.seed)  # identical init on every rank
        model = (loop_config.get("model_builder") or _default_model_builder)(
            cfg, build_tokenizer(cfg.data.tokenizer).vocab_size)
        self.engine, self.optimizer = build_engine(model.to(self.device), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.warmup_steps, cfg.train.max_steps,
                                         cfg.train.min_lr_ratio)
        self.float_dtype = floating_dtype(self.engine)
        self.plain = is_plain(deepspeed_config(cfg.train))
        ckpt.seed_everything(cfg.run.seed + self.rank)  # per-rank streams: dropout, masking, shuffling

        self.state, self.weights_at = ckpt.TrainState(), -1
        self.phases = PhaseTimes()
        restored = ray.train.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as directory:
                self.state = ckpt.load(self.engine, self.scheduler, directory, self.rank, self.world)
                self.weights_at = self.state.step if (Path(directory) / ckpt.WEIGHTS_FILE).exists() else -1
            log.info("rank %d resumed at step %d (epoch %d, batch %d)", self.rank, self.state.step,
                     self.state.epoch, self.state.batch_in_epoch)

        collate = loop_config.get("collate") or _default_collate(cfg, self.rank, self.state.step)
        self.stream = BatchStream(ray.train.get_dataset_shard("train"), cfg.train.batch_size, collate,
                                  epoch=self.state.epoch, batch_in_epoch=self.state.batch_in_epoch,
                                  prefetch=cfg.data.prefetch_batches, shuffle_buffer=cfg.data.shuffle_buffer,
                                  seed=cfg.run.seed, rank=self.rank, cache=cfg.data.worker_cache,
                                  cache_max_gib=cfg.data.worker_cache_max_gib)
        self.stream.fill_cache()  # data.worker_cache: the split is read here, before the first step is timed
        self.start_step = self.state.step  # reported: where this attempt began (0, or the checkpoint it resumed)
        self.after_step = loop_config.get("after_step")
        self.metric_logger = None
        if self.rank == 0 and loop_config.get("mlflow_run_id"):
            from instraction.tracking import MetricLogger

            self.metric_logger = MetricLogger(loop_config["mlflow_uri"], loop_config["mlflow_run_id"])
        log.info("rank %d/%d ready in %.1f s (ZeRO-%d, %s, %s, seed %d + rank)", self.rank, self.world,
                 time.perf_counter() - started, cfg.train.zero_stage, cfg.train.precision, self.device, cfg.run.seed)

    # ------------------------------------------------------------------------------------------------ train
    def train(self) -> None:
        t = self.cfg.train
        batches = iter(self.stream)
        tick = started = time.perf_counter()
        metrics: dict[str, float] = {}
        while self.state.step < t.max_steps:
            batch, wait_s = next(batches)
            self.phases.add("data_wait", wait_s)
            metrics = self.step(to_device(batch, self.device, self.float_dtype))
            self.state.step += 1
            self.state.epoch, self.state.batch_in_epoch = self.stream.epoch, self.stream.batch_in_epoch
            self.state.samples_seen += batch_rows(batch)
            now = time.perf_counter()
            elapsed, tick = now - tick, now
            metrics.update(step_time_s=elapsed, data_wait_share=min(1.0, wait_s / elapsed),
                           clips_per_s=t.batch_size / elapsed, **self._counters(), **self._memory())
            self._maybe_fail()
            if self.metric_logger and self.state.step % t.log_every == 0:
                with self.phases("log"):
                    self.metric_logger.log(self.state.step, metrics)
            self.phases.add("step", time.perf_counter() - now + elapsed)
            if self.after_step:  # e.g. the train benchmark holding the workers between its measured segments
                held = time.perf_counter()
                self.after_step(self.state.step)
                tick += time.perf_counter() - held  # not step time
            final = self.state.step == t.max_steps
            if final or self.state.step % t.checkpoint_every == 0:
                with self.phases("checkpoint"):
                    if self.metric_logger:  # every step up to the checkpoint is in the store before it is reported
                        self.metric_logger.flush()
                    self._report(metrics, save=True, export=final and t.export_weights)
                tick = time.perf_counter()  # checkpoint time is not step time
            elif self.state.step % t.report_every == 0:
                with self.phases("report"):
                    self._report(metrics, save=False)
                tick = time.perf_counter()
        if t.export_weights and self.weights_at != self.state.step:  # nothing ran (resumed at the end, max_steps 0)
            self._report(metrics, save=True, export=True, suffix="_final")
        log.info("rank %d: steps %d-%d in %.1f s", self.rank, self.start_step, self.state.step,
                 time.perf_counter() - started)

    def step(self, batch: dict) -> dict[str, float]:
        """One training step; returns rank-averaged ``loss`` and ``*_loss``, rank 0's diagnostics, lr, grad_norm."""
        lr = self.optimizer.param_groups[0]["lr"]
        with self.phases("forward"):
            out = self.engine(batch)
        values, grad_norm, applied = optimizer_step(self.engine, out, self.world, self.plain, self.cfg.train.grad_clip,
                                                    self.phases)
        self.scheduler.step()
        if applied:
            self.state.consecutive_nonfinite = 0
        else:
            self.state.skipped_nonfinite += 1
            self.state.consecutive_nonfinite += 1
            if self.state.consecutive_nonfinite >= self.cfg.train.max_consecutive_nonfinite:
                raise FloatingPointError(f"{self.state.consecutive_nonfinite} non-finite steps in a row at step "
                                         f"{self.state.step + 1}: {values}")
        diagnostics = {k: float(v) for k, v in out.items()
                       if k not in values and torch.is_tensor(v) and v.numel() == 1}
        return {**values, **diagnostics, "lr": lr, "grad_norm": grad_norm}

    def _counters(self) -> dict[str, int]:
        """Where the run stands (every rank has the same values)."""
        return {"epoch": self.state.epoch, "skipped_nonfinite": self.state.skipped_nonfinite}

    def _memory(self) -> dict[str, float]:
        """Peak resident memory of this worker process (and peak CUDA memory on GPU), GiB."""
        out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # ru_maxrss: KiB
        if self.device.type == "cuda":
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out

    # ------------------------------------------------------------------------------------------ checkpoints
    def _report(self, metrics: dict[str, float], save: bool, export: bool = False, suffix: str = "") -> None:
        """``ray.train.report`` on every rank (a barrier); with ``save`` every rank first writes its state."""
        import ray.train

        payload = {**metrics, **self._counters(), **self.phases.means_ms(), "torch_threads": torch.get_num_threads(),
                   "bf16_autocast": float(self.cfg.train.precision == "bf16-mixed"), "step": self.state.step,
                   "samples_seen": sum_over_ranks(self.state.samples_seen, self.device),
                   "batch_in_epoch": self.state.batch_in_epoch, "resume_skip_s": self.stream.resume_skip_s,
                   "cache_fill_s": self.stream.cache_fill_s,
                   "start_step": self.start_step}
        if not save:
            ray.train.report(payload)
            return
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="instraction-ckpt-", ignore_cleanup_errors=True) as directory:
            ckpt.save(self.engine, self.scheduler, self.state, directory, self.rank, self.world)
            if export:
                ckpt.export_weights(self.engine, Path(directory) / ckpt.WEIGHTS_FILE, self.rank,
                                    {"step": str(self.state.step)})
                self.weights_at = self.state.step
            payload["checkpoint_s"] = time.perf_counter() - start
            ray.train.report(payload, checkpoint=ray.train.Checkpoint.from_directory(directory),
                             checkpoint_dir_name=f"checkpoint_{self.state.step:08d}{suffix}")

    def _maybe_fail(self) -> None:
        """Test switch ``train.fail_at_step``: rank 0 raises once (a marker in the run directory remembers)."""
        if self.cfg.train.fail_at_step != self.state.step or self.rank != 0:
            return
        from instraction.storage import open_filesystem

        fs, path = open_filesystem(f"{self.run_dir.rstrip('/')}/.failed_at_step_{self.state.step}", self.cfg.data.s3)
        if fs.exists(path):
            return
        with fs.open(path, "w") as f:
            f.write(str(os.getpid()))
        raise RuntimeError(f"train.fail_at_step={self.state.step}: injected worker failure")


def worker_threads(cpus_per_worker: float) -> int:
    """torch intra-op threads of a training worker: the CPUs it reserved, rounded up (a worker of 1.5 CPUs that
    leaves half a core to Ray Data's actors still computes on 2 threads once they are idle). Set explicitly: torch's
    own default is every core the process sees, so workers sharing a machine would each run that many threads."""
    return max(1, math.ceil(cpus_per_worker))


def batch_rows(batch: dict) -> int:
    """Rows of a collated batch (the leading dimension of its first tensor)."""
    return next(len(v) for v in batch.values() if torch.is_tensor(v))


def agreed_precision(train, device: torch.device):
    """``train`` with its precision resolved (``engine.resolve_precision``), ``auto`` by every rank together:
    bf16 autocast only if every rank's device computes bf16 natively, since ranks in different precisions would
    bucket their gradients differently and their collectives would not match (collective when ``auto``)."""
    native = None
    if train.precision == "auto" and dist.is_initialized():
        native = sum_over_ranks(int(native_bf16(train.use_gpu)), device) == dist.get_world_size()
    return resolve_precision(train, native)


def sum_over_ranks(count: int, device: torch.device) -> int:
    """``count`` summed over the process group (collective: every rank calls it)."""
    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


class PhaseTimes:
    """Wall seconds per phase of the training step, summed over steps (a CPU step is synchronous, so the phases
    add up; on a GPU, kernels still running are charged to the phase that waits for them). ``means_ms()`` gives
    ``phase_<name>_ms`` per step for the reports: data_wait, forward, loss_sync (the loss all-reduce), backward
    (with DeepSpeed's gradient reduction), optimizer (clipping and the step), log (MLflow), step (all of it);
    checkpoint and report per step that did one."""

    PREFIX, SUFFIX = "phase_", "_ms"

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def means_ms(self) -> dict[str, float]:
        per_call = {"checkpoint", "report"}  # not every step does one
        steps = self.counts.get("step", 0)  # "step" is added once per step
        return {f"{self.PREFIX}{k}{self.SUFFIX}": 1e3 * v / max(1, self.counts[k] if k in per_call else steps)
                for k, v in self.seconds.items()}

    @classmethod
    def from_metrics(cls, metrics: dict) -> dict[str, float]:
        """{phase: ms} back from a report's ``phase_<name>_ms`` entries (what :meth:`means_ms` wrote)."""
        return {k[len(cls.PREFIX):-len(cls.SUFFIX)]: v for k, v in metrics.items()
                if k.startswith(cls.PREFIX) and k.endswith(cls.SUFFIX) and isinstance(v, (int, float))}


def optimizer_step(engine, out: dict, world: int, plain: bool, grad_clip: float, phases: PhaseTimes | None = None
                   ) -> tuple[dict[str, float], float, bool]:
    """Backward and optimizer step of one training step, given the model's output dict ``out``.

    Returns (rank-averaged ``loss`` and ``*_loss`` values, gradient norm, whether the step was applied). A step
    whose loss is not finite on any rank is skipped on every rank (the all-reduce gives all the same values).
    ``phases`` collects the time of loss_sync, backward and optimizer. Shared by :class:`Trainer` and the
    single-GPU step benchmark (``instraction.train.step_benchmark``).
    """
    phases = phases or PhaseTimes()
    names = sorted(k for k in out if k == "loss" or k.endswith("_loss"))  # fixed by the model contract
    with phases("loss_sync"):
        losses = torch.stack([out[k].detach().float().reshape(()) for k in names])
        dist.all_reduce(losses)  # a NaN on any rank reaches every rank: all take the same branch below
        values = dict(zip(names, (losses / world).tolist()))
    grad_norm, applied = float("nan"), False
    if all(math.isfinite(v) for v in values.values()):
        with phases("backward"):
            engine.backward(out["loss"])
        with phases("optimizer"):
            if plain:  # fp32 ZeRO-0: the gradients are all-reduced; clip and check them here
                grad_norm = clip_plain_gradients(engine, grad_clip)
                if math.isfinite(grad_norm):
                    engine.step()
                    applied = True
                else:
                    engine.zero_grad()
            else:
                engine.step()
                applied = engine.was_step_applied()
                norm = engine.get_global_grad_norm()
                grad_norm = float(norm) if norm is not None else float("nan")
    return values, grad_norm, applied
