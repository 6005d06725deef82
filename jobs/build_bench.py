"""Build InstrAct Bench (Semantic / Logic / Dynamics) from a curated annotation table.

    python jobs/build_bench.py                                   # embedded default (run jobs/curate.py first)
    python jobs/build_bench.py --config configs/howto100m_viclip_b.yaml bench.out=s3://bucket/bench

Reads every Parquet file under data.annotations, holds out bench.holdout_fraction of the source videos, writes
semantic/logic/dynamics Parquet files and manifest.json to bench.out (default <annotations>/../bench).
"""

from __future__ import annotations

import argparse
import json

from instraction.bench import build as bench_build
from instraction.config import EMBEDDED_DEFAULT, exit_on_config_error, load_config


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT), help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = bench_build.default_out(cfg)
    table = bench_build.read_annotations(cfg.data.annotations, cfg.data.s3)
    tables = bench_build.build(table, cfg.bench, source=cfg.data.annotations)
    bench_build.write(tables, out, cfg.data.s3)
    print(json.dumps({"bench": out, **tables.manifest["counts"], "skipped": tables.manifest["skipped"]}, indent=2))
    return tables.manifest


if __name__ == "__main__":
    main()
