"""Evaluate a model on InstrAct Bench (paper Sec. 5-6): Semantic, Logic, Dynamics, each also with the frames reversed,
shuffled and reduced to one random frame (static), plus the alignment analysis of Fig. 7-8.

    python jobs/evaluate.py --checkpoint runs/synthkitchen-tiny-20250101-120000     # a pretrain run directory
    python jobs/evaluate.py --checkpoint ckpt/model.safetensors --config configs/default.yaml
    python jobs/evaluate.py --untrained                                             # random-init InstrAction model
    python jobs/evaluate.py --backbone --config configs/howto100m_viclip_b.yaml     # zero-shot backbone baseline

Cross-evaluation (Sec. 6.1): report InstrAct-Semantic of a model trained with
configs/ablations/crosseval_semantic.yaml (order-swapped negatives) and InstrAct-Logic of one trained with
configs/ablations/crosseval_logic.yaml (verb-altered negatives); see configs/ablations/README.md.

The bench is read from bench.out (default <data.annotations>/../bench; build it with jobs/build_bench.py), its clips
from data.shards. Writes results.json, tables.md and plots/*.png to --out (default <run dir>/eval-<method> for a
checkpoint, else <run.dir>/eval-<method>-<time>) and logs them to MLflow (MLFLOW_TRACKING_URI, else
sqlite:///<run.dir>/mlflow.db). Runs on one device: CUDA when available.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from instraction.config import ConfigError, exit_on_config_error, load_config
from instraction.storage import is_remote, local_path


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: the checkpoint's config.yaml)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="pretrain run dir, checkpoint dir or model.safetensors of InstrAction")
    what.add_argument("--backbone", action="store_true", help="zero-shot bare towers of model.* (+ model.pretrained)")
    what.add_argument("--untrained", action="store_true", help="InstrAction model at its random init (run.seed)")
    parser.add_argument("--name", default=None, help="method label in tables, plots and MLflow")
    parser.add_argument("--out", default=None, help="output directory (local)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    return parser.parse_args(argv)


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    import torch

    from instraction.bench import build as bench_build
    from instraction.bench.evaluate import BenchVideos, evaluate
    from instraction.bench.plots import write_plots
    from instraction.bench.report import dumps, log_to_mlflow, tables_markdown
    from instraction.bench.scorers import (BackboneScorer, InstrActionScorer, load_instraction,
                                           resolve_checkpoint)
    from instraction.data.tokenizer import build_tokenizer

    config_path, weights = args.config, None
    if args.checkpoint:
        found, weights = resolve_checkpoint(args.checkpoint)
        config_path = config_path or found
        if config_path is None:
            raise ConfigError(f"no config.yaml found near {args.checkpoint}; pass --config")
    cfg = load_config(config_path, args.overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = build_tokenizer(cfg.data.tokenizer)
    torch.manual_seed(cfg.run.seed)
    if args.backbone:
        name, scorer = args.name or "backbone (zero-shot)", BackboneScorer.from_config(cfg, tokenizer, device)
    else:
        from instraction.model.instraction import build_model

        model = (load_instraction(cfg, weights, tokenizer.vocab_size, device) if weights is not None
                 else build_model(cfg, tokenizer.vocab_size).to(device))
        name, scorer = args.name or ("InstrAction" if weights else "untrained"), InstrActionScorer(model, tokenizer, cfg.data)

    bench_dir = bench_build.default_out(cfg)
    tables = bench_build.load(bench_dir, cfg.data.s3)
    if weights is not None:  # a trained model: its training must not have seen the bench's videos
        try:
            bench_build.check_split(tables.manifest, cfg.bench, f"the checkpoint {weights}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    videos = BenchVideos(cfg, tables)
    results = evaluate(scorer, tables, videos, cfg)
    results["meta"] = {"method": name, "checkpoint": str(weights) if weights else None, "bench": bench_dir,
                       "bench_counts": tables.manifest.get("counts", {}), "device": device}

    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if args.out:
        out = Path(args.out)
    elif weights is not None:  # beside the checkpoint (its run directory), whichever config was passed
        out = Path(weights).parent / f"eval-{slug}"
    else:
        base = local_path(cfg.run.dir) if not is_remote(cfg.run.dir) else "."
        out = Path(base) / f"eval-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(dumps(results))
    (out / "tables.md").write_text(tables_markdown({name: results}, title=f"InstrAct Bench — {name}"))
    plots = write_plots({name: results}, out / "plots")
    run_id = None
    if cfg.tracking.enabled:
        training_run = Path(weights).parent / "mlflow_run_id" if weights is not None else None
        tags = {"kind": "evaluation", "method": name, "checkpoint": results["meta"]["checkpoint"], "bench": bench_dir}
        if training_run is not None and training_run.exists():
            tags["training_run_id"] = training_run.read_text().strip()
        run_id = log_to_mlflow(cfg, str(out), results, [str(out / "results.json"), str(out / "tables.md")], plots, tags)
    summary = {"out": str(out), "mlflow_run_id": run_id, "plots": plots,
               **{task: results[task] for task in ("semantic", "logic", "dynamics")},
               "temporal_gap": results.get("temporal_gap"), "counts": results["counts"]}
    print(json.dumps(summary, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
