"""The main job's stages, end to end: data -> curation [-> frames] -> bench -> training -> evaluation -> summary.

    summary = pretrain(cfg)      # what `python jobs/pretrain.py` runs; Ray must already be initialised

Every stage is skipped when its output is already there and current (SynthKitchen cache marker, curation state per
shard, frames-store state per shard, bench manifest), so a re-run only trains. The run directory holds config.yaml,
the checkpoints (Ray Train storage), model.safetensors, bench/ (results.json, tables.md, plots) and summary.json.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from instraction import storage
from instraction.config import EMBEDDED_DEFAULT, Config, ConfigError, load_config, to_yaml

Echo = Callable[[str], None]


class PeakMemory:
    """Samples the resident memory of this process and all its descendants (Ray's raylet and workers started by
    ray.init) every ``interval`` seconds. RSS counts shared pages once per process, so this is an upper bound."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self._root = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _sample(self) -> int:
        total = 0
        for proc in [self._root, *self._root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except Exception:  # a process that just ended
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float:
        return round(self.peak_bytes / 2**30, 3)


class Stages:
    """Named, timed stages with a visible start/end line each (the main job's progress)."""

    def __init__(self, echo: Echo):
        self.echo = echo
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.echo(f"[{len(self.seconds) + 1}] {name}: {what}")
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - tic, 2)
            self.echo(f"    {name} done in {self.seconds[name]:.1f} s")


def run_directory(cfg: Config) -> str:
    run_id = cfg.run.id or f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    root = cfg.run.dir.rstrip("/")
    return f"{root}/{run_id}" if storage.is_remote(root) else str(Path(storage.local_path(root), run_id).resolve())


@functools.lru_cache(maxsize=1)
def embedded_shards() -> str:
    """data.shards of the embedded default (configs/default.yaml): where SynthKitchen is rendered unasked."""
    return load_config(EMBEDDED_DEFAULT).data.shards


def wants_synthkitchen(cfg: Config) -> bool:
    """Whether to render (or complete) SynthKitchen at data.shards: when that location holds no shard or an
    unfinished render of ours, and data.make_synthetic allows it there (unset: only at the embedded default's
    location). Raises :class:`ConfigError` naming the location when it holds no shard and may not be rendered into,
    so a mistyped path is an error rather than a fresh SynthKitchen."""
    from instraction.data import shards
    from instraction.data.synthetic import written_by_synthkitchen

    location, mode = cfg.data.shards, cfg.data.make_synthetic
    if mode is False:
        return False
    try:
        present = shards.list_shards(location, cfg.data.s3)
    except (FileNotFoundError, ValueError):
        present = []
    ours = not storage.is_remote(location) and written_by_synthkitchen(location)
    if present and not ours:
        return False  # somebody else's shards: use them as they are (ours, even half-rendered, are completed)
    if mode is None and not _same_location(location, embedded_shards()):
        if present:
            return False  # ours, rendered here on request earlier: used as they are
        raise ConfigError(f"no shards at data.shards={storage.redact(location)!r}; SynthKitchen is rendered only into "
                          f"the embedded default's {embedded_shards()!r} or with data.make_synthetic=true")
    return True


def _same_location(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def prepare_data(cfg: Config, stages: Stages) -> None:
    """SynthKitchen where :func:`wants_synthkitchen` says so."""
    from instraction.data.synthetic import make_synthkitchen

    if not wants_synthkitchen(cfg):
        return
    with stages("data", f"SynthKitchen -> {cfg.data.shards}"):
        import ray

        paths = make_synthkitchen(cfg.data.shards, cfg.synthkitchen(), log=stages.echo,
                                  use_ray=ray.is_initialized())
        stages.echo(f"    {len(paths)} shards ready")


def curate(cfg: Config, stages: Stages) -> dict:
    from instraction.curation.pipeline import curate as run_curation

    with stages("curate", f"{cfg.curation.backend} backend -> {cfg.data.annotations}"):
        summary = run_curation(cfg, progress=True, echo=stages.echo)
        table = summary.get("table", {})
        stages.echo(f"    annotation table: {json.dumps(table.get('by_decision', table))}")
    return summary


def extract_frames(cfg: Config, stages: Stages) -> dict | None:
    """The frames store when data.frames is set (training then reads frames instead of decoding video)."""
    if not cfg.data.frames:
        return None
    from instraction.data.frames import extract_frames as run_extraction

    with stages("frames", f"{cfg.data.num_frames} frames at {cfg.data.size}, quality {cfg.data.frames_quality} "
                          f"-> {cfg.data.frames}"):
        summary = run_extraction(cfg, progress=True, echo=stages.echo)
        stages.echo(f"    frames store: {json.dumps(summary['store'])}")
    return summary


def build_bench(cfg: Config, stages: Stages) -> str:
    from instraction.bench import build as bench_build

    out = bench_build.default_out(cfg)
    with stages("bench", f"InstrAct Bench (held-out {cfg.bench.holdout_fraction:.0%} of source videos) -> {out}"):
        table = bench_build.read_annotations(cfg.data.annotations, cfg.data.s3)
        tables = bench_build.build(table, cfg.bench, source=cfg.data.annotations)
        bench_build.write(tables, out, cfg.data.s3)
        counts = tables.manifest["counts"]
        stages.echo(f"    semantic {counts['semantic']}, logic {counts['logic']}, dynamics {counts['dynamics']} clips "
                    f"in {counts['dynamics_pools']} pools; train clips {counts['train']}")
    return out


def train(cfg: Config, run_dir: str, stages: Stages) -> dict:
    from instraction.curation.negatives import negatives_for
    from instraction.data.pipeline import format_report, training_dataset
    from instraction.train.launch import run_training
    from instraction.train.loop import PhaseTimes

    with stages("train", f"Ray Train, {cfg.train.num_workers} workers, DeepSpeed ZeRO-{cfg.train.zero_stage}, "
                         f"{cfg.train.max_steps} steps"):
        pipe = training_dataset(cfg, "train", truth_negatives=negatives_for)  # for shards without annotations
        result = run_training(cfg, run_dir, {"train": pipe.dataset})
        phases = PhaseTimes.from_metrics(result.get("metrics", {}))
        if phases:
            stages.echo("    rank 0, ms per step: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
        try:
            result["data_accounting"]["pipeline"] = pipe.report()
            stages.echo("    " + format_report(result["data_accounting"]["pipeline"]).replace("\n", "\n    "))
        except Exception as err:  # the accounting actor is gone (e.g. after a cluster restart): say so
            result["data_accounting"]["pipeline"] = {"error": repr(err)}
    return result


def evaluate(cfg: Config, run_dir: str, bench_dir: str, weights: str | None, stages: Stages) -> dict:
    """The trained model with its temporal controls (static single frame, shuffled, reversed) beside the untrained
    one (same init seed) on normal clips."""
    import torch

    from instraction.bench import build as bench_build
    from instraction.bench import report
    from instraction.bench.evaluate import evaluate as score
    from instraction.bench.plots import write_plots
    from instraction.bench.scorers import InstrActionScorer, load_instraction
    from instraction.data.tokenizer import build_tokenizer
    from instraction.model.instraction import build_model

    out = f"{run_dir}/bench"
    with stages("evaluate", f"InstrAct Bench: trained (+ static, shuffled, reversed) vs untrained -> {out}"):
        tables = bench_build.load(bench_dir, cfg.data.s3)
        videos = bench_videos(cfg, tables)
        tokenizer = build_tokenizer(cfg.data.tokenizer)
        torch.manual_seed(cfg.run.seed)
        untrained = build_model(cfg, tokenizer.vocab_size)
        methods: dict[str, Any] = {}
        if not weights:  # summary.json's bench then holds empty dicts: say why where the user looks
            stages.echo("    no trained weights to score (train.export_weights=false, or no final checkpoint): "
                        "only the untrained baseline is evaluated")
        else:
            trained = load_instraction(cfg, weights, tokenizer.vocab_size)
            methods["InstrAction (trained)"] = score(InstrActionScorer(trained, tokenizer, cfg.data), tables, videos,
                                                     cfg)
        # the baseline on normal clips only: its temporal controls say nothing (a quarter of the clip encodings saved)
        methods["untrained"] = score(InstrActionScorer(untrained, tokenizer, cfg.data), tables, videos, cfg,
                                     controls=())
        storage.write_text(f"{out}/results.json", report.dumps(methods), cfg.data.s3)
        storage.write_text(f"{out}/tables.md", report.tables_markdown(methods), cfg.data.s3)
        plots = write_plots(methods, out) if not storage.is_remote(out) else []
        stages.echo(report.compare_table(methods))
        comp = report.compositional_table(methods)
        if comp:
            stages.echo("verb-object pairs seen in training vs unseen:\n" + comp)
    return {"methods": methods, "dir": out, "plots": plots}


BENCH_IN_MEMORY_BYTES = 2 << 30
"""Up to this many bytes of decoded bench clips are held in memory and scored by every method; above it (a paper-
scale bench: 224^2 x 8 frames is 1.2 MB a clip) each method streams them, decoding again per method."""


def bench_videos(cfg: Config, tables):
    """The bench clips for the evaluate stage: in memory when they fit :data:`BENCH_IN_MEMORY_BYTES`, else a stream."""
    from instraction.bench.evaluate import BenchVideos, LoadedVideos

    d = cfg.data
    stream = BenchVideos(cfg, tables)
    if len(stream.needed) * d.num_frames * d.size * d.size * 3 <= BENCH_IN_MEMORY_BYTES:
        return LoadedVideos(stream)
    return stream


def pretrain(cfg: Config, echo: Echo = print) -> dict[str, Any]:
    """Run every stage; write and return the run summary (summary.json in the run directory)."""
    from instraction.bench.report import dumps

    run_dir = run_directory(cfg)
    if not storage.is_remote(run_dir):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    storage.write_text(f"{run_dir}/config.yaml", to_yaml(cfg), cfg.data.s3)
    stages = Stages(echo)
    echo(f"run directory: {run_dir}")
    with PeakMemory() as memory:
        prepare_data(cfg, stages)
        curation = curate(cfg, stages)
        frames = extract_frames(cfg, stages)
        bench_dir = build_bench(cfg, stages)
        result = train(cfg, run_dir, stages)
        evaluation = evaluate(cfg, run_dir, bench_dir, result.get("weights"), stages) if cfg.run.evaluate else None
    summary = _summary(cfg, run_dir, curation, result, evaluation, stages, memory)
    if frames is not None:
        summary["data_accounting"]["frames"] = frames["store"]
    if result.get("mlflow_run_id") and evaluation:
        _log_bench(cfg, result["mlflow_run_id"], evaluation, summary)
    storage.write_text(f"{run_dir}/summary.json", dumps(summary), cfg.data.s3)
    return summary


def _summary(cfg, run_dir, curation, result, evaluation, stages, memory) -> dict[str, Any]:
    from instraction import tracking

    methods = evaluation["methods"] if evaluation else {}
    trained = methods.get("InstrAction (trained)", {})
    bench = {task: trained.get(task, {}) for task in ("semantic", "logic", "dynamics")}
    static = trained.get("controls", {}).get("static", {})
    return {
        "run_dir": run_dir,
        "steps": result.get("steps", 0),
        "mlflow_run_id": result.get("mlflow_run_id"),
        # user:password@ stripped: a postgresql+psycopg2://user:pw@host URI must not land in a file or a log
        "mlflow_tracking_uri": storage.redact(tracking.tracking_uri(cfg)) if cfg.tracking.enabled else None,
        "weights": result.get("weights"),
        "bench": bench,
        "baselines": {
            "untrained": {t: methods.get("untrained", {}).get(t, {}) for t in ("semantic", "logic", "dynamics")},
            "static_single_frame": static,
        },
        "temporal_gap": trained.get("temporal_gap", {}),
        # seen vs unseen verb-object pairs (the static baseline's split is under baselines.static_single_frame)
        "compositional": trained.get("compositional", {}),
        "data_accounting": {**result.get("data_accounting", {}), "curation": curation.get("table", {})},
        "stage_seconds": stages.seconds,
        "peak_memory_gib": memory.peak_gib,
        "final_metrics": {k: v for k, v in result.get("metrics", {}).items() if isinstance(v, (int, float))},
    }


def _log_bench(cfg, run_id: str, evaluation: dict, summary: dict) -> None:
    from instraction.bench.report import flatten_metrics
    from instraction import tracking

    metrics = {}
    for method, results in evaluation["methods"].items():
        prefix = "bench" if method.startswith("InstrAction") else f"baseline/{method}"
        metrics.update(flatten_metrics(results, prefix=prefix))
    metrics["peak_memory_gib"] = summary["peak_memory_gib"]
    tracking.log_metrics(cfg, run_id, metrics, step=int(summary["steps"]))
    files = [f"{evaluation['dir']}/results.json", f"{evaluation['dir']}/tables.md", *evaluation["plots"]]
    tracking.log_artifacts(cfg, run_id, [f for f in files if storage.is_remote(f) or os.path.exists(f)], artifact_path="bench")

