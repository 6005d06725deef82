"""``python jobs/benchmark.py e2e [--config PATH] [key=value ...]``: the main job's wall time per stage, its share
of the whole, and peak memory. Fresh data/annotation/run directories under a temporary root, so every stage really
runs (no cache). Ray starts as in the main job (instraction/cluster.py)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from instraction.cluster import init_ray
from instraction.config import EMBEDDED_DEFAULT, load_config


def main(argv: list[str] | None = None) -> int:
    from instraction.train.loop import PhaseTimes
    from instraction.workflow import pretrain

    parser = argparse.ArgumentParser(prog="benchmark.py e2e")
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="instraction-e2e-")
    cfg = load_config(args.config, [f"data.shards={root}/shards", f"data.annotations={root}/annotations",
                                    f"run.dir={root}/runs", "data.make_synthetic=true", *args.overrides])
    init_ray(cfg)
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
    comp = summary.get("compositional", {})
    if comp:
        get = lambda task, side, m: comp.get(task, {}).get(side, {}).get(m, float("nan"))  # noqa: E731
        print(f"verb-object pairs seen / unseen in training: Semantic R@1 {get('semantic', 'seen', 'R@1'):.1f} / "
              f"{get('semantic', 'unseen', 'R@1'):.1f}; Logic ACC {get('logic', 'seen', 'ACC'):.1f} / "
              f"{get('logic', 'unseen', 'ACC'):.1f}")
    phases = PhaseTimes.from_metrics(summary.get("final_metrics", {}))
    if phases:
        print("training step, rank 0, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0
