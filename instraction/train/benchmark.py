"""Training benchmark: samples/s of Ray Train + DeepSpeed ZeRO-2 (2 workers) against a plain single-process
PyTorch loop on the same model, global batch and cores, in one run; plus peak memory. Goal: Ray >= 85% of plain.

    python jobs/benchmark.py train                                # embedded default model, global batch 32
    python jobs/benchmark.py train --batch-size 8 --steps 12 model.video.width=32   # dotted config overrides

Both sides train the model of the run config (``configs/default.yaml`` + overrides) with AdamW, clipping and the
warmup+cosine schedule, on the same in-memory decode-stage rows (uint8 video, token ids) collated by the same
``instraction.data.examples.Collate``:

- plain: one process, batch = global batch, rows sliced in the loop; run with ``workers`` intra-op threads and
  with 1 (on a small shared machine, intra-op threading of small kernels can be far slower than one thread);
  the faster of the two is the reference: the best a single process does on these cores;
- Ray: ``run_training`` with ``workers`` Ray Train workers (1 thread each), ZeRO-2 on gloo, rows through Ray Data
  (``from_items`` -> streaming split -> ``iter_torch_batches`` with the collate in prefetch threads);
- one worker's share (context): the plain loop on 1 thread with the per-worker batch. ``workers`` x its rate is
  what perfect data parallelism would reach, so Ray / that is the parallel efficiency (the overhead of Ray
  Train, Ray Data and DeepSpeed's gradient exchange alone). The plain global-batch loop can be slower than that:
  the contrastive and alignment losses compare every pair in the batch (O(B^2)), which data parallelism splits
  into per-rank blocks, and intra-op threading scales worse than processes on small kernels.

Same cores: the process pins itself (and so Ray, started here) to the first ``workers`` cores. Each plain loop
runs in a fresh process, before and after the Ray run (this machine is shared; the mean of the two brackets it).
Throughput is steady state: the first ``--warmup`` steps are dropped and the rest summed step by step (Ray: rank
0's ``step_time_s``, checkpoint and report time excluded; both include waiting for data). Peak memory: plain =
the process's peak RSS; Ray = the peak RSS of each training worker and the summed RSS of the whole Ray process
tree (raylet, GCS, workers, object store pages counted per process: an upper bound).

This is an entry point (called by jobs/benchmark.py), so it may start Ray: only if none is running.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np



def make_rows(cfg, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` decode-stage rows (what the Ray Data pipeline emits): uint8 video [T,H,W,3] and int32 token ids."""
    from instraction.data.tokenizer import build_tokenizer
    from instraction.model.testing import make_dummy_batch

    batch = make_dummy_batch(cfg, build_tokenizer(cfg.data.tokenizer).vocab_size, n, seed=seed)
    rng = np.random.default_rng(seed)
    d = cfg.data
    video = rng.integers(0, 256, (n, d.num_frames, d.size, d.size, 3), dtype=np.uint8)
    rows = []
    for i in range(n):
        row = {"key": f"bench{i:05d}", "video": video[i]}
        for name in ("text_ids", "neg_ids", "verb_ids", "mam_ids", "mam_labels", "verb_count"):
            row[name] = batch[name][i].numpy().astype(np.int32)
        for name in ("text_mask", "neg_mask", "verb_mask"):
            row[name] = batch[name][i].numpy().astype(bool)
        rows.append(row)
    return rows


def plain_loop(cfg_yaml: str, rows: list[dict], global_batch: int, steps: int, warmup: int, threads: int) -> dict:
    """Single-process reference: same model, optimizer, clipping, schedule and collate; no Ray, no DeepSpeed."""
    import torch

    from instraction.config import from_yaml
    from instraction.data.examples import Collate
    from instraction.train.engine import plain_training

    torch.set_num_threads(threads)
    cfg = from_yaml(cfg_yaml)
    _, train_step = plain_training(cfg)
    collate = Collate(cfg.data)
    cols = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "key"}
    times, collate_times = [], []
    for step in range(steps):
        start = time.perf_counter()
        lo = (step * global_batch) % (len(rows) - global_batch + 1)
        batch = collate({k: v[lo:lo + global_batch] for k, v in cols.items()})
        collate_times.append(time.perf_counter() - start)
        train_step(batch)
        times.append(time.perf_counter() - start)
    steady = times[warmup:]
    return {"samples_per_s": global_batch * len(steady) / sum(steady),
            "step_time_s": float(np.median(steady)), "collate_share": sum(collate_times[warmup:]) / sum(steady),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class TreeMemory:
    """Peak summed RSS of this process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.root, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0
            for proc in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except Exception:
                    continue
            self.peak = max(self.peak, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def ray_run(cfg, rows: list[dict], warmup: int) -> dict:
    import ray.data
    from mlflow import MlflowClient

    from instraction.train.launch import run_training
    from instraction.tracking import tracking_uri

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp, TreeMemory() as memory:
        cfg.run.dir = tmp
        cfg.tracking.tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        result = run_training(cfg, f"{tmp}/run", {"train": ray.data.from_items(rows)})
        client = MlflowClient(tracking_uri=tracking_uri(cfg))
        history = client.get_metric_history(result["mlflow_run_id"], "step_time_s")
        waits = client.get_metric_history(result["mlflow_run_id"], "data_wait_share")
    times = [m.value for m in sorted(history, key=lambda m: m.step)][warmup:]
    wait = [m.value for m in sorted(waits, key=lambda m: m.step)][warmup:]
    global_batch = cfg.train.batch_size * cfg.train.num_workers
    return {"samples_per_s": global_batch * len(times) / sum(times), "step_time_s": float(np.median(times)),
            "data_wait_share": float(np.mean(wait)), "peak_rss_gib_rank0": result["metrics"]["peak_rss_gib"],
            "peak_tree_rss_gib": memory.peak / 2**30,
            "rank0_phase_ms": {k: v for k, v in result["metrics"].items() if k.startswith("phase_")}}


def main(argv: list[str] | None = None) -> int:
    from instraction.config import EMBEDDED_DEFAULT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="per worker; the plain loop takes workers x this")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT))
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (model size, data shape)")
    args = parser.parse_args(argv)

    from instraction.cluster import set_report_poll_env
    from instraction.config import load_config, to_yaml

    cores = sorted(os.sched_getaffinity(0))[: args.workers]
    os.sched_setaffinity(0, cores)  # Ray (started below) and the plain loop's process inherit these cores
    set_report_poll_env()
    cfg = load_config(args.config, [*args.overrides, f"train.num_workers={args.workers}",
                                    f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}",
                                    f"train.checkpoint_every={args.steps}", f"train.report_every={args.steps}",
                                    f"train.zero_stage={args.zero_stage}", "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5",
                                    "train.export_weights=false"])
    global_batch = args.workers * args.batch_size
    rows = make_rows(cfg, global_batch * (args.steps + 1), seed=cfg.run.seed)  # one epoch: no pipeline restart

    def plain(batch: int = global_batch, threads: int = 1) -> dict:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return pool.submit(plain_loop, to_yaml(cfg), rows, batch, args.steps, args.warmup, threads).result()

    print(f"model of {args.config} + {args.overrides}; global batch {global_batch}; cores {cores}")
    thread_counts = sorted({args.workers, 1})

    def plain_runs(when: str) -> dict[int, dict]:
        runs = {}
        for threads in thread_counts:
            runs[threads] = plain(threads=threads)
            print(f"plain, {threads} thread(s) ({when}): {runs[threads]['samples_per_s']:.1f} samples/s")
        return runs

    before = plain_runs("before")
    from instraction.cluster import ray_session

    with ray_session(num_cpus=len(cores)):
        distributed = ray_run(cfg, rows, args.warmup)
    print(f"Ray Train + DeepSpeed ZeRO-{args.zero_stage}: {distributed['samples_per_s']:.1f} samples/s")
    after = plain_runs("after")
    share = plain(args.batch_size, 1)
    print(f"one worker's share (1 thread, batch {args.batch_size}): {share['samples_per_s']:.1f} samples/s")
    by_threads = {n: (before[n]["samples_per_s"] + after[n]["samples_per_s"]) / 2 for n in thread_counts}
    best_threads = max(by_threads, key=by_threads.get)
    reference = by_threads[best_threads]
    results = {
        "global_batch": global_batch, "workers": args.workers, "cores": cores, "steps": args.steps,
        "warmup": args.warmup,
        "plain": {"samples_per_s_by_threads": by_threads, "best_threads": best_threads, "samples_per_s": reference,
                  "before": before, "after": after},
        "ray_deepspeed": distributed, "ratio": distributed["samples_per_s"] / reference, "goal": 0.85,
        "one_worker_share": share,
        "parallel_efficiency": distributed["samples_per_s"] / (args.workers * share["samples_per_s"]),
    }
    print(json.dumps(results, indent=2))
    print(f"\nRay Train + DeepSpeed / plain PyTorch = {results['ratio']:.1%} (goal >= 85%); parallel efficiency "
          f"{results['parallel_efficiency']:.1%}; peak memory: plain "
          f"{before[best_threads]['peak_rss_gib']:.2f} GiB, Ray worker "
          f"{distributed['peak_rss_gib_rank0']:.2f} GiB each, "
          f"Ray process tree {distributed['peak_tree_rss_gib']:.2f} GiB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0
