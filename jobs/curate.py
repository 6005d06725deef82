"""LLM-assisted curation (paper Sec. 3): filter captions, extract verb phrases, build hard negatives.

    python jobs/curate.py                                   # embedded default: SynthKitchen + rules backend
    python jobs/curate.py data.shards=s3://bucket/shards data.annotations=s3://bucket/annotations
    python jobs/curate.py curation.backend=hf curation.model=/models/Qwen2.5-0.5B-Instruct curation.concurrency=2
    python jobs/curate.py curation.backend=openai curation.base_url=http://127.0.0.1:8000/v1   # e.g. `vllm serve`
    python jobs/curate.py --config configs/howto100m_viclip_b.yaml curation.backend=vllm \
        curation.model=Qwen/Qwen2.5-7B-Instruct curation.concurrency=8 curation.min_concurrency=2
    RAY_ADDRESS=auto python jobs/curate.py ...              # on a running cluster (or: ray job submit -- python ...)

Writes ``<data.annotations>/<shard>.parquet`` (one row per clip read: kept / dropped / quarantined and why) and
``<data.annotations>/summary.json``. Shards already curated with the same model and prompt version are skipped
(``curation.force=true`` re-curates them). Exits 1 when the backend's engine cannot start, 2 on a config error
(one line: an unknown key, a bad value, a data.shards without shards where SynthKitchen is not rendered) or when
nothing was curated because every shard was unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys

from instraction.cluster import init_ray
from instraction.config import EMBEDDED_DEFAULT, exit_on_config_error, load_config


def _ensure_synthetic(cfg) -> None:
    """SynthKitchen at a local data.shards as the main job renders it (instraction.workflow.wants_synthkitchen: only
    at the embedded default's location unless data.make_synthetic=true; an interrupted render completed, one of
    another config re-rendered); anyone else's shards are used as they are. A location without shards that may not
    be rendered into raises ConfigError."""
    from instraction.data import shards, synthetic
    from instraction.workflow import wants_synthkitchen

    location = cfg.data.shards
    if shards.is_s3(location) or any(ch in location for ch in "*?["):
        return
    if not wants_synthkitchen(cfg):
        return
    print(f"SynthKitchen at {location}: rendering what is missing", flush=True)
    synthetic.make_synthkitchen(location, cfg.synthkitchen(), log=lambda line: print(line, flush=True))


def format_summary(summary: dict) -> str:
    counts = summary["counts"]
    lines = [f"{summary['backend']} ({summary['model']}, prompt {summary['prompt_version']}): "
             f"{summary['shards_curated']} shards curated, {summary['shards_skipped']} skipped, "
             f"{len(summary['unreadable_shards'])} unreadable, {summary['seconds']:.1f}s",
             f"{'decision':<12} {'reason':<22} {'clips':>8}"]
    for decision in ("kept", "dropped", "quarantined"):
        for reason, n in sorted(counts["by_reason"].get(decision, {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"{decision:<12} {reason:<22} {n:>8}")
    lines.append(f"{'total':<35} {counts['rows']:>8}")
    for bad in summary["unreadable_shards"]:
        lines.append(f"unreadable: {bad['shard']}: {bad['detail']}")
    return "\n".join(lines)


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(EMBEDDED_DEFAULT), help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    ns = parser.parse_args(argv)
    cfg = load_config(ns.config, ns.overrides)

    from instraction.curation.backends import EngineUnavailable
    from instraction.curation.pipeline import curate

    _ensure_synthetic(cfg)
    init_ray(log_to_driver=True)
    try:
        summary = curate(cfg, progress=True, echo=lambda line: print(line, flush=True))
    except (EngineUnavailable, FileNotFoundError) as err:  # no engine; no shard where data.shards points
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    print(json.dumps({"annotations": cfg.data.annotations, "table": summary["table"]}))
    nothing = summary["shards_curated"] == 0 and summary["shards_skipped"] == 0 and summary["unreadable_shards"]
    return 2 if nothing else 0


if __name__ == "__main__":
    sys.exit(main())
