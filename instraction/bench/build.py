"""Build InstrAct Bench (paper Sec. 5) from the annotation table of the held-out split.

    Semantic  10-way MCQ: the caption + 9 verb-altered negatives (exactly bench.semantic_candidates)
    Logic     MCQ: the caption + 2-3 order-swapped negatives, clips with >= bench.logic_min_actions actions
    Dynamics  object pools: held-out clips grouped by primary object (>= dynamics_min_pool clips, top-N objects),
              each pool tagged Ingredients / Processed food / Tools & appliances

The split is by source video (instraction.data.split.is_holdout), so no bench clip shares a key or a source video
with training; build() checks it and writes the check into the manifest. Compositional split: each Semantic and
Logic question lists its clip's verb-object pairs that no training clip has (``unseen_pairs``; action_pairs says
what a pair is), so the evaluation scores questions on seen and on unseen combinations apart. Output:
semantic.parquet, logic.parquet, dynamics.parquet and manifest.json under the bench directory.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from instraction import lexicon
from instraction.bench.config import BenchConfig
from instraction.curation.rules import lemma_of
from instraction.storage import open_filesystem, read_json
from instraction.data.split import is_holdout

BENCH_VERSION = "2"  # 2: MCQ rows carry unseen_pairs (compositional split)
CLIP_COLUMNS = ["key", "shard", "video_key", "video_id", "start", "end"]


@dataclass
class BenchTables:
    semantic: pd.DataFrame
    logic: pd.DataFrame
    dynamics: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


def split_annotations(table: pd.DataFrame, bench: BenchConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout) rows of the kept clips, split by source video."""
    kept = table[table["decision"] == "kept"]
    held = kept["video_id"].astype(str).map(lambda v: is_holdout(v, bench.holdout_fraction, bench.seed))
    return kept[~held], kept[held]


def _distinct(items, exclude: str) -> list[str]:
    seen: list[str] = []
    for item in items if items is not None else []:
        item = str(item)
        if item != exclude and item not in seen:
            seen.append(item)
    return seen


def action_pairs(actions, primary_object) -> set[tuple[str, str]]:
    """(verb, object) of each verb phrase of a clip: the phrase's first word as a lemma and the clip's primary
    object (a phrase often names it by a pronoun: "whisk it")."""
    obj = str(primary_object or "").strip().lower()
    pairs = set()
    for action in actions if actions is not None else []:
        words = str(action).lower().split()
        if words and obj:
            pairs.add((lemma_of(words[0]) or words[0], obj))
    return pairs


def training_pairs(train: pd.DataFrame) -> set[tuple[str, str]]:
    """Every (verb, object) pair of the training split's kept clips."""
    seen: set[tuple[str, str]] = set()
    for actions, obj in zip(train["actions"], train["primary_object"]):
        seen |= action_pairs(actions, obj)
    return seen


def _mcq_rows(rows: pd.DataFrame, negatives_of, n_neg_min: int, n_neg_max: int, rng: random.Random, skipped: Counter,
              reason: str, seen: set[tuple[str, str]]):
    out = []
    for row in rows.itertuples(index=False):
        negs = _distinct(negatives_of(row), row.caption)
        if len(negs) < n_neg_min:
            skipped[reason] += 1
            continue
        negs = negs[:n_neg_max]
        candidates = [row.caption, *negs]
        order = list(range(len(candidates)))
        rng.shuffle(order)
        shuffled = [candidates[i] for i in order]
        out.append({**{c: getattr(row, c) for c in CLIP_COLUMNS}, "candidates": shuffled, "answer": order.index(0),
                    "actions": list(row.actions),
                    "unseen_pairs": sorted(f"{v} {o}" for v, o in action_pairs(row.actions, row.primary_object) - seen)})
    return out


def category_of(obj: str, bench: BenchConfig) -> str:
    return bench.categories.get(obj) or lexicon.OBJECTS.get(obj) or "Other"


def build(table: pd.DataFrame, bench: BenchConfig, source: str = "") -> BenchTables:
    """Build the three tasks from a full annotation table (all shards)."""
    train, held = split_annotations(table, bench)
    seen = training_pairs(train)
    rng = random.Random(bench.seed)
    skipped: Counter = Counter()
    held = held.sort_values("key")
    n_sem = bench.semantic_candidates - 1
    semantic = _mcq_rows(held, lambda r: r.verb_altered, n_sem, n_sem, rng, skipped, "semantic_too_few_verb_altered",
                         seen)

    logic_pool = held[held["actions"].map(len) >= bench.logic_min_actions]
    skipped["logic_too_few_actions"] += len(held) - len(logic_pool)
    logic = _mcq_rows(logic_pool, lambda r: r.order_swapped, 2, bench.logic_max_negatives, rng, skipped,
                      "logic_too_few_order_swapped", seen)
    semantic, logic = semantic[: bench.max_per_task], logic[: bench.max_per_task]

    objects = held["primary_object"].fillna("").astype(str)
    counts = objects[objects != ""].value_counts()
    counts = counts[counts >= bench.dynamics_min_pool].head(bench.dynamics_top_objects)
    dyn = held[objects.isin(counts.index)]
    skipped["dynamics_not_in_a_pool"] += len(held) - len(dyn)
    dynamics = pd.DataFrame({
        **{c: dyn[c].values for c in CLIP_COLUMNS},
        "caption": dyn["caption"].values,
        "object": dyn["primary_object"].values,
        "category": [category_of(o, bench) for o in dyn["primary_object"]],
    })

    train_keys, train_videos = set(train["key"]), set(train["video_id"].astype(str))
    bench_keys = {r["key"] for r in semantic + logic} | set(dynamics["key"])
    bench_videos = {str(r["video_id"]) for r in semantic + logic} | set(dynamics["video_id"].astype(str))
    overlap = {"keys": len(bench_keys & train_keys), "videos": len(bench_videos & train_videos)}
    if overlap["keys"] or overlap["videos"]:
        raise RuntimeError(f"bench overlaps training: {overlap}")

    manifest = {
        "version": BENCH_VERSION,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "holdout_fraction": bench.holdout_fraction,
        "seed": bench.seed,
        "counts": {
            "annotated": int(len(table)), "kept": int(len(train) + len(held)), "train": int(len(train)),
            "holdout": int(len(held)), "semantic": len(semantic), "logic": len(logic), "dynamics": int(len(dynamics)),
            "dynamics_pools": int(len(counts)),
        },
        "skipped": dict(skipped),
        "train_overlap": overlap,
        "pools": {obj: {"clips": int(n), "category": category_of(obj, bench)} for obj, n in counts.items()},
        "compositional": {
            "train_pairs": len(seen),
            "unseen_pairs": sorted({p for r in semantic + logic for p in r["unseen_pairs"]}),
            **{task: {"seen": sum(not r["unseen_pairs"] for r in rows), "unseen": sum(bool(r["unseen_pairs"]) for r in rows)}
               for task, rows in (("semantic", semantic), ("logic", logic))},
        },
    }
    return BenchTables(pd.DataFrame(semantic), pd.DataFrame(logic), dynamics, manifest)


def check_split(manifest: dict, bench: BenchConfig, what: str = "the model") -> None:
    """ValueError unless the bench was held out with ``bench``'s split (``holdout_fraction``, ``seed``): the one
    the training pipeline of ``what`` used to keep those videos out. A bench rebuilt with another split (the default
    bench folder is shared by every run on the same annotations) holds videos that model trained on."""
    built = (manifest.get("holdout_fraction"), manifest.get("seed"))
    if built != (bench.holdout_fraction, bench.seed):
        raise ValueError(f"the bench was built with holdout_fraction={built[0]}, seed={built[1]}, but {what} was "
                         f"trained with holdout_fraction={bench.holdout_fraction}, seed={bench.seed}: its videos "
                         "overlap that training; rebuild it with that config (jobs/build_bench.py --config "
                         "<its config.yaml> bench.out=<new folder>) and evaluate against bench.out=<new folder>")


def write(tables: BenchTables, out_dir: str, s3=None) -> None:
    """Write the three Parquet files and manifest.json (local path or s3://; ``s3``: an S3Config)."""
    fs, root = open_filesystem(out_dir, s3)
    fs.makedirs(root, exist_ok=True)
    for name in ("semantic", "logic", "dynamics"):
        with fs.open(f"{root}/{name}.parquet", "wb") as f:
            getattr(tables, name).to_parquet(f, index=False)
    with fs.open(f"{root}/manifest.json", "w") as f:
        json.dump(tables.manifest, f, indent=2)


def load(out_dir: str, s3=None) -> BenchTables:
    fs, root = open_filesystem(out_dir, s3)
    frames = {}
    for name in ("semantic", "logic", "dynamics"):
        with fs.open(f"{root}/{name}.parquet", "rb") as f:
            frames[name] = pd.read_parquet(f)
    return BenchTables(**frames, manifest=read_json(f"{out_dir.rstrip('/')}/manifest.json", s3))


def read_annotations(location: str, s3=None) -> pd.DataFrame:
    """All annotation Parquet files under ``location`` (local or s3://) as one DataFrame."""
    fs, root = open_filesystem(location, s3)
    files = sorted(fs.glob(f"{root.rstrip('/')}/*.parquet"))
    if not files:
        raise FileNotFoundError(f"no annotation Parquet files under {location!r}; run jobs/curate.py first")
    frames = []
    for path in files:
        with fs.open(path, "rb") as f:
            frames.append(pd.read_parquet(f))
    return pd.concat(frames, ignore_index=True)


def default_out(cfg) -> str:
    """bench.out, else a ``bench`` folder beside the annotation table."""
    if cfg.bench.out:
        return cfg.bench.out
    return cfg.data.annotations.rstrip("/").rsplit("/", 1)[0] + "/bench" if "/" in cfg.data.annotations else "bench"
