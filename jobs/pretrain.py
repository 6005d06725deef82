"""Pretrain InstrAction: data -> curation -> InstrAct Bench -> Ray Train + DeepSpeed -> evaluation -> MLflow.

    python jobs/pretrain.py                                        # embedded default: SynthKitchen, 2 CPU workers
    python jobs/pretrain.py train.max_steps=50 run.name=smoke      # dotted overrides
    python jobs/pretrain.py --config configs/howto100m_viclip_b.yaml                  # paper scale
    ray job submit --working-dir . -- python jobs/pretrain.py --config configs/...    # on a Ray cluster

Ray: joins the cluster named by RAY_ADDRESS (or the one `ray job submit` runs it on); otherwise starts a local one.
MLflow: MLFLOW_TRACKING_URI when set, else sqlite:///<run.dir>/mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")  # Train V2's report() otherwise blocks ~2 s

from instraction.config import EMBEDDED_DEFAULT, load_config  # noqa: E402


def _init_ray(cfg, log_to_driver: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)  # the cluster we were submitted to / pointed at
    else:
        # Logical CPUs: training workers, decode actors and shard readers each reserve theirs; on a small machine
        # they must fit side by side (the OS shares the cores) or the workers would wait forever for data.
        from instraction.train.launch import cpus_needed

        needed = cpus_needed(cfg, side_by_side=True)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 2, math.ceil(needed)), include_dashboard=False,
                 log_to_driver=log_to_driver,
                 runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})


def benchmark(argv: list[str] | None = None) -> int:
    """``python jobs/benchmark.py e2e [--config PATH] [key=value ...]``: the main job's wall time per stage, its
    share of the whole, and peak memory. Fresh data/annotation/run directories under a temporary root, so every
    stage really runs (no cache)."""
    import shutil
    import tempfile
    import time

    from instraction.workflow import pretrain

    parser = argparse.ArgumentParser(prog="benchmark.py e2e")
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="instraction-e2e-")
    cfg = load_config(args.config, [f"data.shards={root}/shards", f"data.annotations={root}/annotations",
                                    f"run.dir={root}/runs", *args.overrides])
    _init_ray(cfg)
    tic = time.perf_counter()
    summary = pretrain(cfg, echo=lambda line: None)
    total = time.perf_counter() - tic
    print(f"{'stage':<10} {'seconds':>9} {'share':>7}")
    for stage, seconds in summary["stage_seconds"].items():
        print(f"{stage:<10} {seconds:>9.1f} {seconds / total:>7.1%}")
    print(f"{'total':<10} {total:>9.1f}   (Ray start-up not included)")
    print(f"peak memory (RSS of the driver and all Ray processes): {summary['peak_memory_gib']:.2f} GiB")
    sem, logic = summary["bench"].get("semantic", {}), summary["bench"].get("logic", {})
    print(f"steps {summary['steps']}; Semantic R@1 {sem.get('R@1', float('nan')):.1f}; "
          f"Logic ACC {logic.get('ACC', float('nan')):.1f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help=f"YAML config (default: {EMBEDDED_DEFAULT.name})")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    cfg = load_config(args.config or EMBEDDED_DEFAULT, args.overrides)
    _init_ray(cfg)

    from instraction.workflow import pretrain

    summary = pretrain(cfg)
    print("\n" + json.dumps({k: summary[k] for k in ("steps", "peak_memory_gib", "stage_seconds")}, indent=2))
    print(f"run directory: {summary['run_dir']}")
    if summary.get("mlflow_run_id"):
        print(f"MLflow run:    {summary['mlflow_run_id']}")
        print(f"MLflow UI:     mlflow ui --backend-store-uri {summary['mlflow_tracking_uri']}")
    return summary


if __name__ == "__main__":
    main()
