"""Render SynthKitchen (procedural instructional clips, motion-only verbs) into data.shards.

    python jobs/make_synthetic.py                                        # the embedded default: 32 x 128 samples
    python jobs/make_synthetic.py data.shards=/tmp/sk data.synthetic.num_shards=2 data.synthetic.seed=3
    python jobs/make_synthetic.py --force                                # re-render even when the cache matches

A finished dataset with the same config (hash in <data.shards>/_synthkitchen.json) is reused; complete shards of
an interrupted run are kept. Local directories only (copy to S3 afterwards). Prints the counts and the path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from instraction.config import EMBEDDED_DEFAULT, exit_on_config_error, load_config
from instraction.data.synthetic import make_synthkitchen, read_marker


@exit_on_config_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT), help="YAML config (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="re-render even when a matching dataset exists")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    synth = cfg.synthkitchen()
    if synth.slots != cfg.data.num_frames:
        print(f"warning: data.synthetic.slots={synth.slots} != data.num_frames={cfg.data.num_frames}: actions are "
              "then not guaranteed 2 sampled frames each", file=sys.stderr)
    paths = make_synthkitchen(cfg.data.shards, synth, force=args.force, log=lambda line: print(line, flush=True))
    marker = read_marker(cfg.data.shards) or {}
    report = {"path": str(Path(cfg.data.shards).resolve()), "shards": len(paths), **marker.get("totals", {}),
              "config_hash": marker.get("config_hash"), "wall_s": marker.get("wall_s")}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
