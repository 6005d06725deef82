"""Convert HowTo100M-style captions + a folder of videos into training shards (no video2dataset needed).

    python jobs/make_shards.py data.convert.captions=caption.json data.convert.videos=videos/ \
        data.shards=data/howto100m/shards [data.convert.samples_per_shard=100] [data.convert.max_videos=1000]
    python jobs/make_shards.py --config configs/howto100m_viclip_b.yaml data.shards=s3://bucket/shards ...

caption.json maps video_id -> {"start": [...], "end": [...], "text": [...]} (HowTo100M's format); the folder
holds <video_id>.mp4 / .webm / .mkv. Each video becomes one whole-video sample (original bytes, ASR segments in
its json), cut into one clip per segment when training reads it. Missing and unreadable videos, and empty or
out-of-range segments, are counted and printed; the per-shard ``_stats.json`` and ``.parquet`` keep them too.
Then run ``jobs/curate.py`` on ``data.shards`` and ``jobs/pretrain.py``.
"""

from __future__ import annotations

import argparse
import json
import sys

from instraction.config import EMBEDDED_DEFAULT, exit_on_config_error, load_config
from instraction.data.howto100m import convert


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT), help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ns = parser.parse_args(argv)
    cfg = load_config(ns.config, ns.overrides)

    def progress(info: dict) -> None:
        print(f"shard {info['shard']:05d}: {info['samples']} videos written of {info['tried']}", flush=True)

    stats = convert(cfg.data, progress)
    missing = stats.pop("missing")
    print(json.dumps(stats, indent=2))
    if missing:
        shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
        print(f"{stats['status'].get('missing_video', 0)} videos listed in captions but not found: {shown}")
    print(f"shards written to {cfg.data.shards}")
    return 0 if stats["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
