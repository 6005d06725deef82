"""What a config learns per step, measured in one process: the tool behind the default's learning sweeps.

    python jobs/benchmark.py learn --steps 600                                   # the embedded default
    python jobs/benchmark.py learn --steps 600 model.perceiver.layers=2 train.lr=2e-3
    python jobs/benchmark.py learn --steps 600 --seeds 0 1 2 --out runs/learn.jsonl

A replica of the Ray Train run's learning without Ray Train or DeepSpeed, so one sweep point costs one core: the
main job's data stages (SynthKitchen, curation, bench; cached as in the main job), the training split read and
decoded once through Ray Data (``data/pipeline.training_dataset``) and kept in a local cache file, then
``train.max_steps`` steps of the global batch (``train.batch_size * train.num_workers``: the workers' gathered
losses are exactly the single-process loss on the global batch, losses/contrastive.py) through the training
collate (augmentation included), AdamW on the same parameter groups, the same warmup + cosine schedule and gradient
clipping, on ``--threads`` torch threads; then InstrAct Bench as the main job scores it (trained model and its
static single-frame control). What differs from the Ray run: the data order (a seeded permutation per epoch, not
Ray Data's streaming split) and BatchNorm statistics over the global batch instead of each worker's half. Prints
one JSON line per run (Semantic R@1, Logic ACC, seen / unseen verb-object pairs, static control, s/step, seconds)
and appends it to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instraction.config import EMBEDDED_DEFAULT, Config, load_config, to_dict
from instraction.train.engine import resolve_precision


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py learn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(EMBEDDED_DEFAULT))
    p.add_argument("--steps", type=int, default=600, help="training steps (the schedule spans them)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="run.seed values (default: the config's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: two sweep points run side by side)")
    p.add_argument("--rows-cache", default=None,
                   help="decoded training rows (default: <data.annotations>/../learn_rows_<hash>.pkl)")
    p.add_argument("--out", default=None, help="append each result as a JSON line here")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    return p


_EXECUTION_FIELDS = ("decode_concurrency", "decode_batch_size", "decode_num_cpus", "read_num_cpus", "prefetch_batches",
                     "shuffle_buffer", "materialize", "worker_cache", "worker_cache_max_gib")
"""``data`` fields that change how the rows are produced or fed, never which rows (the pipeline's rows are the same)."""


def _rows_key(cfg: Config) -> str:
    """What the decoded training rows depend on: the data section (less ``augment``, which the collate applies
    later, and the fields that only say how the pipeline runs: :data:`_EXECUTION_FIELDS`), the split, the seed that
    picks each clip's negatives, and the annotation files (a re-curated table is a new cache)."""
    annotations = Path(cfg.data.annotations)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in annotations.glob("*.parquet")) \
        if annotations.is_dir() else []
    data = {k: v for k, v in to_dict(cfg)["data"].items() if k != "augment" and k not in _EXECUTION_FIELDS}
    blob = json.dumps([data, cfg.bench.holdout_fraction, cfg.bench.seed, cfg.run.seed, files],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def training_rows(cfg: Config, cache: str | None = None) -> list[dict[str, Any]]:
    """The training split as decoded rows (``data.pipeline`` output), read once through Ray Data and cached."""
    path = Path(cache or Path(cfg.data.annotations).parent / f"learn_rows_{_rows_key(cfg)}.pkl")
    if path.exists():
        with open(path, "rb") as f:
            return pickle.load(f)
    from instraction.cluster import ray_session
    from instraction.curation.negatives import negatives_for
    from instraction.data.pipeline import training_dataset

    with ray_session(cfg):
        rows = training_dataset(cfg, "train", truth_negatives=negatives_for).dataset.take_all()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        pickle.dump(rows, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return rows


def train_in_process(cfg: Config, rows: list[dict[str, Any]], steps: int, log=print) -> tuple[torch.nn.Module, dict]:
    """``steps`` steps of the global batch on ``rows``; returns the model and {"s_per_step", "last_losses"}."""
    from instraction.data.examples import Collate
    from instraction.train.engine import plain_training

    t = cfg.train
    batch = t.batch_size * t.num_workers
    if len(rows) < batch:
        raise ValueError(f"{len(rows)} training rows cannot fill a global batch of {batch}")
    model, train_step = plain_training(cfg, total_steps=steps)
    collate = Collate(cfg.data, augment_seed=(cfg.run.seed, 0, 0))
    rng = np.random.default_rng(cfg.run.seed)
    order, pos, losses = rng.permutation(len(rows)), 0, {}
    tic = time.perf_counter()
    for step in range(1, steps + 1):
        if pos + batch > len(order):
            order, pos = rng.permutation(len(rows)), 0
        picked = [rows[i] for i in order[pos:pos + batch]]
        pos += batch
        out = train_step(collate({k: np.stack([r[k] for r in picked]) for k in picked[0]}))
        if step % 100 == 0 or step == steps:
            losses = {k: round(float(v.detach()), 4) for k, v in out.items() if k == "loss" or k.endswith("_loss")}
            log(f"step {step}/{steps} {losses} {(time.perf_counter() - tic) / step:.3f} s/step")
    return model.eval(), {"s_per_step": (time.perf_counter() - tic) / max(1, steps), "last_losses": losses}


def score(cfg: Config, model: torch.nn.Module) -> dict[str, Any]:
    """InstrAct Bench of the main job's data (trained model + static control): the headline numbers."""
    from instraction.bench import build as bench_build
    from instraction.bench.evaluate import evaluate
    from instraction.bench.scorers import InstrActionScorer
    from instraction.data.tokenizer import build_tokenizer
    from instraction.workflow import bench_videos

    tables = bench_build.load(bench_build.default_out(cfg), cfg.data.s3)
    scorer = InstrActionScorer(model, build_tokenizer(cfg.data.tokenizer), cfg.data)
    res = evaluate(scorer, tables, bench_videos(cfg, tables), cfg, controls=("static",), alignment=False)
    comp = res.get("compositional", {})
    side = lambda task, s, m: comp.get(task, {}).get(s, {}).get(m)  # noqa: E731
    return {"semantic_R@1": res["semantic"]["R@1"], "logic_ACC": res["logic"]["ACC"],
            "static_semantic_R@1": res["controls"]["static"]["semantic"]["R@1"],
            "semantic_seen_R@1": side("semantic", "seen", "R@1"), "semantic_unseen_R@1": side("semantic", "unseen", "R@1"),
            "logic_seen_ACC": side("logic", "seen", "ACC"), "logic_unseen_ACC": side("logic", "unseen", "ACC")}


def prepare(cfg: Config) -> None:
    """The main job's data stages (each cached): SynthKitchen where the main job would render it, curation, bench."""
    from instraction.cluster import ray_session
    from instraction.workflow import Stages, build_bench, curate, prepare_data

    stages = Stages(lambda line: None)
    with ray_session(cfg):
        prepare_data(cfg, stages)
        curate(cfg, stages)
    build_bench(cfg, stages)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    base = load_config(args.config, args.overrides)
    torch.set_num_threads(args.threads)
    prepare(base)
    for seed in args.seeds if args.seeds is not None else [base.run.seed]:
        cfg = load_config(args.config, [*args.overrides, f"run.seed={seed}", f"train.max_steps={args.steps}"])
        rows = training_rows(cfg, args.rows_cache)
        tic = time.perf_counter()
        model, run = train_in_process(cfg, rows, args.steps, log=lambda line: print(line, flush=True))
        result = {"overrides": args.overrides, "seed": seed, "steps": args.steps, "rows": len(rows),
                  "precision": resolve_precision(cfg.train).precision,
                  **{k: round(v, 2) if isinstance(v, float) else v for k, v in score(cfg, model).items()},
                  "s_per_step": round(run["s_per_step"], 4), "seconds": round(time.perf_counter() - tic, 1),
                  "last_losses": run["last_losses"]}
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0
