"""Table 4 on SynthKitchen: each ablation config trained and evaluated over several seeds; mean and spread.

    python jobs/ablate.py                                    # the four Table 4 rows x seeds 0 1 2
    python jobs/ablate.py --seeds 0 1 --configs configs/ablations/table4_both.yaml train.max_steps=200
    python jobs/ablate.py --cross-eval                       # Sec. 6.1: Semantic from order-swapped-HN runs,
                                                             # Logic from verb-altered-HN runs (2x the runs)

Every run shares the data, the annotation table and the bench (built once); only the model seed differs.
Writes <run.dir>/ablation-<time>/{results.json,table.md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from instraction.cluster import init_ray
from instraction.config import exit_on_config_error, load_config

ROOT = Path(__file__).resolve().parents[1]
TABLE4 = ["table4_hn_only", "table4_mam", "table4_dtw", "table4_both"]
COLUMNS = [("semantic", "R@1"), ("semantic", "R@5"), ("semantic", "MedR"), ("logic", "ACC"), ("dynamics", "Mean_R@1")]


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=[str(ROOT / "configs/ablations" / f"{n}.yaml") for n in TABLE4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cross-eval", action="store_true", help="Semantic / Logic from separately trained runs")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run (anywhere on the line)")
    argv = sys.argv[1:] if argv is None else list(argv)
    # key=value items may follow --configs / --seeds, whose nargs="+" would otherwise swallow them
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides

    from instraction.ablation import ablation_table, run_ablation

    first = load_config(args.configs[0], args.overrides)
    init_ray(first)
    out = Path(first.run.dir) / f"ablation-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    results = run_ablation(args.configs, args.seeds, args.overrides, cross_eval=args.cross_eval, echo=print)
    table = ablation_table(results, COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"written to {out}")
    return results


if __name__ == "__main__":
    main()
