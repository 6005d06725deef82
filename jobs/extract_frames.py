"""The frames store: decode every kept clip's sampled frames once, so training reads frames instead of video.

    python jobs/extract_frames.py data.frames=data/synthkitchen/frames                 # JPEG q95 4:4:4
    python jobs/extract_frames.py data.frames=data/synthkitchen/frames-raw data.frames_quality=0   # raw uint8, exact
    python jobs/extract_frames.py --config configs/howto100m_viclip_b.yaml              # s3:// beside the shards
    RAY_ADDRESS=auto python jobs/extract_frames.py ...      # on a running cluster (or: ray job submit -- python ...)

Writes ``<data.frames>/<shard>.parquet`` (one row per kept clip: its data.num_frames frames at data.size, or the
reason it could not be decoded) and ``<data.frames>/summary.json`` (every clip read: written or dropped[reason]).
Run it after jobs/curate.py; then train with the same ``data.frames``. Shards whose file is current (same shard
bytes, annotation file and frame settings) are skipped. Exits 1 when data.frames is unset or there is no shard,
2 when nothing was extracted because every shard was unreadable or failed, 3 when some shard failed.
"""

from __future__ import annotations

import argparse
import json
import sys

from instraction.cluster import init_ray
from instraction.config import EMBEDDED_DEFAULT, exit_on_config_error, load_config


def format_summary(summary: dict) -> str:
    c, s = summary["counts"], summary["settings"]
    lines = [f"frames ({s['num_frames']} at {s['size']}, quality {s['quality']}): {summary['shards_extracted']} "
             f"shards extracted, {summary['shards_skipped']} current, {len(summary['unreadable_shards'])} unreadable, "
             f"{len(summary['failed_shards'])} failed, {summary['seconds']:.1f}s",
             f"  clips read {c['clips_read']}: written {c['written']}, dropped {c['dropped_total']}"]
    lines += [f"    {reason}: {n}" for reason, n in sorted(c["dropped"].items(), key=lambda kv: -kv[1])]
    lines += [f"  unreadable: {b['shard']}: {b['detail']}" for b in summary["unreadable_shards"]]
    lines += [f"  failed: {b['shard']}: {b['detail']}" for b in summary["failed_shards"]]
    return "\n".join(lines)


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT), help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ns = parser.parse_args(argv)
    cfg = load_config(ns.config, ns.overrides)
    if not cfg.data.frames:
        print("error: set data.frames (a directory or s3:// prefix for the frames store)", file=sys.stderr)
        return 1

    from instraction.data.frames import extract_frames

    init_ray(log_to_driver=True)
    try:
        summary = extract_frames(cfg, progress=True, echo=lambda line: print(line, flush=True))
    except FileNotFoundError as err:  # no shard where data.shards points
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(json.dumps({"frames": cfg.data.frames, "store": summary["store"]}))
    if summary["shards_extracted"] == 0 and summary["shards_skipped"] == 0:
        return 2
    return 3 if summary["failed_shards"] else 0


if __name__ == "__main__":
    sys.exit(main())
