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

from instraction.cluster import init_ray
from instraction.config import EMBEDDED_DEFAULT, exit_on_config_error, load_config


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help=f"YAML config (default: {EMBEDDED_DEFAULT.name})")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    cfg = load_config(args.config or EMBEDDED_DEFAULT, args.overrides)
    init_ray(cfg)

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
