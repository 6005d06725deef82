"""Training benchmark: samples/s of Ray Train + DeepSpeed (2 workers) against a plain single-process PyTorch loop
on the same model, global batch and cores, interleaved in one run; plus peak memory. Goal: Ray >= 85% of plain.

    python jobs/benchmark.py train                                 # the embedded default's model, batch, ZeRO stage
    python jobs/benchmark.py train --batch-size 8 --steps 20 --segment 5 model.video.width=32   # dotted overrides

Both sides train the model of the run config (``configs/default.yaml`` + overrides) with AdamW, clipping, the
warmup+cosine schedule and the run's precision, on the same in-memory decode-stage rows (uint8 video, token ids)
collated by the same ``instraction.data.examples.Collate``:

- Ray: ``run_training`` with ``workers`` Ray Train workers (1 thread each) on gloo, rows through Ray Data
  (``from_items`` -> the workers' splits, cached per worker as the default run does);
- plain: one process, batch = global batch, rows sliced in the loop, with ``workers`` intra-op threads and with 1
  (intra-op threading of small kernels can be slower than one thread); the faster of the two is the reference,
  the best a single process does on these cores;
- one worker's share (context): the plain loop on 1 thread with the per-worker batch. ``workers`` x its rate is
  what perfect data parallelism would reach, so Ray / that is the parallel efficiency. The plain global-batch loop
  can be slower than that: the contrastive and alignment losses compare every pair in the batch (O(B^2)), which
  data parallelism splits into per-rank blocks;
- independent (context): ``workers`` such loops side by side, sharing nothing, timed by the slower: data
  parallelism without any exchange, under the same contention for the cores as the workers. Ray / that is the
  cost of the exchange, the ranks waiting for each other, Ray Train and DeepSpeed.

Interleaved, because this machine's speed drifts by up to 1.7x within minutes (two back-to-back runs of the
earlier before / Ray / after layout gave 55% and 85%). The Ray run is cut into segments of ``--segment`` steps: at
the end of each, every rank waits (``run_training(after_step=...)``, outside the timed step) while the driver times
one segment of each plain loop; the plain loops live in persistent processes and go on where they stopped. Each
round (one Ray segment and the plain segments after it) sees the same machine, and the ratio sums the rounds after
``--warmup`` steps. Per-round ratios are reported too: their spread is the noise left. While the workers wait,
Ray's own processes still run (raylet, GCS, the controller's polls, idle actors, and this driver with its
once-a-second memory sampler); the CPU they take then is reported as ``ray_cpu_while_held`` (a share of the cores,
by process name too, over the rounds kept): the plain reference pays it here.

Step time: Ray = rank 0's ``step_time_s`` (its wait for the other rank and for data included, checkpoints and
reports excluded); plain = its loop's step including the collate. Peak memory: plain = each process's peak RSS;
Ray = the peak RSS of each training worker and the summed RSS of the Ray process tree (raylet, GCS, workers, object
store pages counted per process: an upper bound), sampled every second.

This is an entry point (called by jobs/benchmark.py), so it may start Ray: only if none is running.
"""

from __future__ import annotations

import argparse
import asyncio
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


# ------------------------------------------------------------------------------------------------ plain loop
_PLAIN: dict[str, Any] = {}  # the state of the plain loop in its own process (set by _plain_init)


def _plain_init(cfg_yaml: str, rows: list[dict], batch: int, threads: int) -> None:
    """Process initializer: the single-process reference (same model, optimizer, clipping, schedule, precision and
    collate as the workers; no Ray, no DeepSpeed), ready to run segments of steps."""
    import torch

    from instraction.config import from_yaml
    from instraction.data.examples import Collate
    from instraction.train.engine import plain_training

    torch.set_num_threads(threads)
    cfg = from_yaml(cfg_yaml)
    _, train_step = plain_training(cfg)
    _PLAIN.update(step=train_step, collate=Collate(cfg.data), batch=batch, done=0,
                  cols={k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "key"})


def _plain_segment(steps: int) -> list[float]:
    """``steps`` more steps of the plain loop; their wall seconds, collate included."""
    p, times = _PLAIN, []
    n = len(next(iter(p["cols"].values())))
    for _ in range(steps):
        start = time.perf_counter()
        lo = (p["done"] * p["batch"]) % (n - p["batch"] + 1)
        p["step"](p["collate"]({k: v[lo:lo + p["batch"]] for k, v in p["cols"].items()}))
        p["done"] += 1
        times.append(time.perf_counter() - start)
    return times


def _plain_facts() -> dict[str, Any]:
    return {"pid": os.getpid(), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


class PlainProcess:
    """One plain loop in a spawned process of its own that keeps its model between segments."""

    def __init__(self, cfg_yaml: str, rows: list[dict], batch: int, threads: int):
        self.pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_plain_init,
                                        initargs=(cfg_yaml, rows, batch, threads))
        self.pid = self.facts()["pid"]

    def segment(self, steps: int) -> list[float]:
        return self.start_segment(steps).result()

    def start_segment(self, steps: int):
        return self.pool.submit(_plain_segment, steps)

    def facts(self) -> dict[str, Any]:
        return self.pool.submit(_plain_facts).result()

    def close(self) -> None:
        self.pool.shutdown()


# ------------------------------------------------------------------------------------------------- Ray side
class Gate:
    """A Ray actor that holds every training rank at the end of a segment until the driver releases it."""

    def __init__(self, world: int):
        self.world, self.arrived, self.events, self.log = world, {}, {}, {}

    def _event(self, segment: int) -> asyncio.Event:
        return self.events.setdefault(segment, asyncio.Event())

    async def wait(self, segment: int) -> None:
        self.arrived[segment] = self.arrived.get(segment, 0) + 1
        self.log.setdefault(segment, {})["all_arrived"] = time.time()  # the last rank's arrival
        await self._event(segment).wait()

    async def ready(self, segment: int) -> bool:
        return self.arrived.get(segment, 0) >= self.world

    async def release(self, segment: int) -> None:
        self.log.setdefault(segment, {})["released"] = time.time()
        self._event(segment).set()

    async def times(self) -> dict[int, dict[str, float]]:
        return self.log


class HoldAtSegmentEnd:
    """``after_step`` for :func:`run_training`: at every ``segment``-th step the rank waits at the gate."""

    def __init__(self, gate, segment: int):
        self.gate, self.segment = gate, segment

    def __call__(self, step: int) -> None:
        if step % self.segment == 0:
            import ray

            ray.get(self.gate.wait.remote(step // self.segment))


def ray_train(cfg, rows: list[dict], after_step) -> dict:
    """The Ray Train run (blocks until it ends): rank 0's step times and the wall times its steps ended (the
    metrics' timestamps, s), in step order, and its last metrics."""
    import ray.data
    from mlflow import MlflowClient

    from instraction.tracking import tracking_uri
    from instraction.train.launch import run_training

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        cfg.run.dir = tmp
        cfg.tracking.tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        result = run_training(cfg, f"{tmp}/run", {"train": ray.data.from_items(rows)}, after_step=after_step)
        history = MlflowClient(tracking_uri=tracking_uri(cfg)).get_metric_history(result["mlflow_run_id"],
                                                                                   "step_time_s")
    history = sorted(history, key=lambda m: m.step)
    return {"step_times": [m.value for m in history], "step_ends": [m.timestamp / 1e3 for m in history],
            "metrics": result["metrics"]}


class TreeCPU:
    """CPU seconds and peak summed RSS of this process and its descendants, except the ``exclude`` pids."""

    def __init__(self, exclude: set[int], interval: float = 1.0):
        import psutil

        self.root, self.exclude, self.interval, self.peak_rss = psutil.Process(), exclude, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def processes(self) -> list:
        return [p for p in [self.root, *self.root.children(recursive=True)] if p.pid not in self.exclude]

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far by process name (``ray::RayTrainWorker``, ``raylet``, ...)."""
        total: dict[str, float] = {}
        for proc in self.processes():
            try:
                t, name = proc.cpu_times(), proc.name()
            except Exception:  # a process that ended between the listing and the read
                continue
            total[name] = total.get(name, 0.0) + t.user + t.system
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0
            for proc in self.processes():
                try:
                    total += proc.memory_info().rss
                except Exception:
                    continue
            self.peak_rss = max(self.peak_rss, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def each_process(plains: dict[str, PlainProcess | list[PlainProcess]]) -> list[PlainProcess]:
    """Every process of ``plains`` (a value is one plain loop or a group run side by side)."""
    return [p for group in plains.values() for p in (group if isinstance(group, list) else [group])]


def run_segment(plain: PlainProcess | list[PlainProcess], steps: int) -> list[float]:
    """One segment of a plain loop, or of several side by side; for several, each step is charged the slower
    process's mean step (so a group of independent processes reads as one loop of their summed batch)."""
    if isinstance(plain, PlainProcess):
        return plain.segment(steps)
    slowest = max(sum(f.result()) for f in [p.start_segment(steps) for p in plain])
    return [slowest / steps] * steps


def interleaved(cfg, rows: list[dict], plains: dict[str, PlainProcess | list[PlainProcess]], segment: int) -> dict:
    """Run Ray Train for ``cfg.train.max_steps`` steps, timing one segment of every plain loop (or group of loops
    run side by side) while its ranks wait at the end of each of its segments. Returns the Ray run's step times and
    metrics, the plain loops' step times per round, and per round the gate's times, the plain segments' wall window
    and Ray's CPU meanwhile."""
    import ray

    rounds = cfg.train.max_steps // segment
    cfg.train.max_failures = 0  # a restarted worker group would redo steps past gates already released
    gate = ray.remote(num_cpus=0)(Gate).remote(cfg.train.num_workers)
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["ray"] = ray_train(cfg, rows, HoldAtSegmentEnd(gate, segment))
        except BaseException as err:  # re-raised by the driver below
            outcome["error"] = err

    plain_times: dict[str, list[list[float]]] = {name: [] for name in plains}
    windows, held_cpu, held_by_name = [], [], []
    cores = len(os.sched_getaffinity(0))
    with TreeCPU({p.pid for p in each_process(plains)}) as tree:
        runner = threading.Thread(target=train, daemon=True)
        runner.start()
        try:
            for r in range(1, rounds + 1):
                while not ray.get(gate.ready.remote(r)):
                    if not runner.is_alive():
                        raise RuntimeError(f"the Ray Train run ended before segment {r} of {rounds}") from (
                            outcome.get("error"))
                    time.sleep(0.02)
                cpu, start = tree.cpu_s(), time.time()
                for name, plain in plains.items():
                    plain_times[name].append(run_segment(plain, segment))
                end = time.time()
                shares = {name: (seconds - cpu.get(name, 0.0)) / (end - start) / cores
                          for name, seconds in tree.cpu_s().items()}
                held_cpu.append(sum(shares.values()))
                held_by_name.append(shares)
                windows.append((start, end))
                ray.get(gate.release.remote(r))
            gate_times = ray.get(gate.times.remote())
        except BaseException:
            ray.kill(gate)  # a rank waiting at the gate fails, and the run ends instead of waiting forever
            runner.join(timeout=120)
            raise
        runner.join()
    if "error" in outcome:
        raise outcome["error"]
    return {**outcome["ray"], "plain_times": plain_times, "plain_windows": windows, "gate": gate_times,
            "ray_cpu_while_held": held_cpu, "ray_cpu_while_held_by_process": held_by_name,
            "peak_tree_rss_gib": tree.peak_rss / 2**30}


def summarise(run: dict, global_batch: int, share_batch: int, segment: int, warmup: int) -> dict:
    """Samples/s of each side over the rounds after ``warmup`` steps, the ratio, and the per-round ratios."""
    skip = -(-warmup // segment)  # whole segments
    rounds = len(run["plain_times"]["share"])
    if len(run["step_times"]) != rounds * segment:
        raise ValueError(f"{len(run['step_times'])} Ray steps timed for {rounds} rounds of {segment}: steps were "
                         "redone or lost")
    ray_rounds = [run["step_times"][i * segment:(i + 1) * segment] for i in range(rounds)]
    kept = range(skip, rounds)
    if not kept:
        raise ValueError(f"no round is left after the first {warmup} steps: raise --steps")

    def rate(times: list[list[float]], batch: int, rounds=kept) -> float:
        return batch * sum(len(times[i]) for i in rounds) / sum(sum(times[i]) for i in rounds)

    context = ("share", "independent")
    plain = {name: rate(times, global_batch) for name, times in run["plain_times"].items() if name not in context}
    best = max(plain, key=plain.get)
    ray_rate = rate(ray_rounds, global_batch)
    per_round = [rate(ray_rounds, global_batch, [i]) / rate(run["plain_times"][best], global_batch, [i])
                 for i in kept]
    share = rate(run["plain_times"]["share"], share_batch)
    independent = rate(run["plain_times"]["independent"], global_batch) if "independent" in run["plain_times"] else None
    workers = global_batch // share_batch
    by_process: dict[str, float] = {}
    for i in kept:
        for name, value in run.get("ray_cpu_while_held_by_process", [{}] * rounds)[i].items():
            by_process[name] = by_process.get(name, 0.0) + value / len(kept)
    by_process = {k: round(v, 4) for k, v in sorted(by_process.items(), key=lambda kv: -kv[1]) if v > 0}
    return {
        "ratio": ray_rate / plain[best],
        "ray_samples_per_s": ray_rate,
        "plain_samples_per_s_by_threads": plain, "best_plain": best, "plain_samples_per_s": plain[best],
        "one_worker_share_samples_per_s": share, "parallel_efficiency": ray_rate / (workers * share),
        **({"independent_samples_per_s": independent, "ray_vs_independent": ray_rate / independent}
           if independent else {}),
        "rounds": len(kept), "round_ratio_median": float(np.median(per_round)),
        "round_ratio_range": [float(min(per_round)), float(max(per_round))], "round_ratios": per_round,
        "ray_step_ms_median": 1e3 * float(np.median([t for i in kept for t in ray_rounds[i]])),
        "ray_cpu_while_held": float(np.mean([run["ray_cpu_while_held"][i] for i in kept])),
        "ray_cpu_while_held_by_process": by_process,
    }


def main(argv: list[str] | None = None) -> int:
    from instraction.config import EMBEDDED_DEFAULT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="default: the config's train.num_workers")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="per worker (default: the config's train.batch_size); the plain loop takes workers x this")
    parser.add_argument("--steps", type=int, default=100, help="Ray steps (a whole number of segments)")
    parser.add_argument("--segment", type=int, default=10, help="steps of each side per round")
    parser.add_argument("--warmup", type=int, default=10, help="steps dropped on each side (whole segments)")
    parser.add_argument("--zero-stage", type=int, default=None, help="default: the config's train.zero_stage")
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT))
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides (model size, data shape)")
    args = parser.parse_args(argv)

    from instraction.cluster import ray_session, set_report_poll_env
    from instraction.config import load_config, to_yaml

    run_cfg = load_config(args.config, args.overrides)
    if args.segment < 1 or args.steps % args.segment:
        parser.error(f"--steps ({args.steps}) must be a whole number of segments of --segment ({args.segment})")
    args.workers = args.workers or run_cfg.train.num_workers
    args.batch_size = args.batch_size or run_cfg.train.batch_size
    args.zero_stage = run_cfg.train.zero_stage if args.zero_stage is None else args.zero_stage
    cores = sorted(os.sched_getaffinity(0))[: args.workers]
    os.sched_setaffinity(0, cores)  # Ray (started below) and the plain loops' processes inherit these cores
    set_report_poll_env()
    cfg = load_config(args.config, [*args.overrides, f"train.num_workers={args.workers}",
                                    f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps}",
                                    f"train.checkpoint_every={args.steps}", f"train.report_every={args.steps}",
                                    "train.log_every=1", f"train.zero_stage={args.zero_stage}",
                                    "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5",
                                    "train.export_weights=false"])
    global_batch = args.workers * args.batch_size
    rows = make_rows(cfg, global_batch * (args.steps + 1), seed=cfg.run.seed)  # one epoch: no pipeline restart
    print(f"model of {args.config} + {args.overrides}; global batch {global_batch}; cores {cores}; "
          f"{args.steps // args.segment} rounds of {args.segment} steps a side", flush=True)
    cfg_yaml = to_yaml(cfg)
    plains: dict[str, PlainProcess | list[PlainProcess]] = {}
    try:
        for n in sorted({args.workers, 1}):
            plains[f"{n}_thread{'s' * (n > 1)}"] = PlainProcess(cfg_yaml, rows, global_batch, n)
        plains["share"] = PlainProcess(cfg_yaml, rows, args.batch_size, 1)
        plains["independent"] = []
        for _ in range(args.workers):
            plains["independent"].append(PlainProcess(cfg_yaml, rows, args.batch_size, 1))
        with ray_session(num_cpus=len(cores)):
            run = interleaved(cfg, rows, plains, args.segment)
        facts = {name: plain.facts() for name, plain in plains.items() if isinstance(plain, PlainProcess)}
    finally:
        for plain in each_process(plains):
            plain.close()
    results = {"global_batch": global_batch, "workers": args.workers, "cores": cores, "steps": args.steps,
               "segment": args.segment, "warmup": args.warmup, "zero_stage": args.zero_stage,
               **summarise(run, global_batch, args.batch_size, args.segment, args.warmup), "goal": 0.85,
               "rank0_phase_ms": {k: v for k, v in run["metrics"].items() if k.startswith("phase_")},
               "peak_rss_gib": {"ray_worker_rank0": run["metrics"]["peak_rss_gib"],
                                "ray_tree": run["peak_tree_rss_gib"],
                                **{f"plain_{name}": f["peak_rss_gib"] for name, f in facts.items()}}}
    print(json.dumps(results, indent=2))
    lo, hi = results["round_ratio_range"]
    print(f"\nRay Train + DeepSpeed / plain PyTorch ({results['best_plain'].replace('_', ' ')}) = "
          f"{results['ratio']:.1%} over {results['rounds']} interleaved rounds (goal >= 85%; per round: median "
          f"{results['round_ratio_median']:.1%}, {lo:.1%}-{hi:.1%}); {results['ray_samples_per_s']:.1f} against "
          f"{results['plain_samples_per_s']:.1f} samples/s; parallel efficiency {results['parallel_efficiency']:.1%} "
          f"(Ray / {args.workers} independent 1-thread processes side by side: {results['ray_vs_independent']:.1%}); "
          f"Ray's processes took {results['ray_cpu_while_held']:.1%} of the cores while the workers waited")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0
