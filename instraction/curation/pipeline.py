"""Curation on Ray Data (paper Sec. 3): shards -> text rows -> backend -> one Parquet file per shard + summary.

    summary = curate(cfg)          # cfg: instraction.config.Config; Ray must already be initialised

Graph, per wave of ``curation.shards_per_wave`` shards (a wave is the unit of resumption):

1. ``from_items(shard URIs)`` one block per shard -> ``map_batches(_ReadShard)``: a Ray task per shard streams
   the tar without video (``shards.iter_clips(with_video=False)``) into a fixed-schema Arrow table of text rows.
   The wave's text rows are materialised (captions only: small) because the LLM backends read them twice
   (sendable rows / pre-send quarantine) and re-ask failed answers in a second pass.
2. ``backend.annotate(rows)``: rules (plain tasks), hf (actor pool), openai / vllm (``ray.data.llm``
   processors); one annotation row per text row (``backends.base.ANNOTATION_SCHEMA``).
3. The driver streams the annotation rows back (small: captions and phrases; a ``groupby`` shuffle would cost
   more than the whole rules backend), gives every clip read without a row (lost in a failed block, see
   ``curation.max_errored_blocks``) a quarantined ``lost_in_backend`` row, and writes each shard to
   ``<data.annotations>/<stem>.parquet`` (local or s3://; tmp + rename locally) with the backend, model, prompt
   version and counts in the Parquet footer.

Re-running skips a shard whose file was written by the same model and prompt version (read from the footer)
unless ``curation.force``. A shard that cannot be opened, or from which no clip was read (an empty tar, or a read
task that failed and was skipped under ``data.max_errored_blocks``), gets no file (so the next run retries it) and
is listed in ``summary.json`` under ``unreadable_shards``; its one quarantined row is not in the counts, which therefore
equal the rows of the files written. ``summary.json`` holds this run's counts by decision and by reason, per
shard, and the totals of the whole table (this run's and the skipped shards' files).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from instraction import storage
from instraction.curation.backends import make_backend
from instraction.curation.backends.base import ANNOTATION_SCHEMA, COLUMNS, Backend, rows_to_table
from instraction.data import shards as shard_io
from instraction.data.config import S3Config

log = logging.getLogger(__name__)

META_KEY = b"instraction.curation"
TEXT_SCHEMA = pa.schema(
    [("key", pa.string()), ("shard", pa.string()), ("video_key", pa.string()), ("video_id", pa.string()),
     ("start", pa.float64()), ("end", pa.float64()), ("caption", pa.string()), ("error", pa.string()),
     ("detail", pa.string())]
)
"""Text rows: ``iter_clips`` rows without video and ground truth."""
_SHARD_ERRORS = ("unreadable_shard", "read_error")
"""Reasons that mean the shard itself could not be read: no file is written, the next run retries it."""


def counts_of(decisions: list[str], reasons: list[str]) -> dict[str, Any]:
    by_reason: dict[str, Counter] = {}
    for d, r in zip(decisions, reasons):
        by_reason.setdefault(d, Counter())[r] += 1
    return {"rows": len(decisions), "by_decision": dict(Counter(decisions)),
            "by_reason": {d: dict(c) for d, c in by_reason.items()}}


def merge_counts(parts: list[dict]) -> dict[str, Any]:
    total = {"rows": 0, "by_decision": Counter(), "by_reason": {}}
    for part in parts:
        total["rows"] += part.get("rows", 0)
        total["by_decision"].update(part.get("by_decision", {}))
        for d, reasons in part.get("by_reason", {}).items():
            total["by_reason"].setdefault(d, Counter()).update(reasons)
    return {"rows": total["rows"], "by_decision": dict(total["by_decision"]),
            "by_reason": {d: dict(c) for d, c in total["by_reason"].items()}}


def annotation_path(root: str, shard_uri: str) -> str:
    return f"{root.rstrip('/')}/{shard_io.shard_stem(shard_uri)}.parquet"


def source_fingerprint(uri: str, s3) -> Optional[dict]:
    """Size and version (mtime locally, ETag on S3) of a shard: a shard rewritten under the same name (e.g. a
    re-rendered SynthKitchen) no longer matches the annotation file's state and is curated again."""
    try:
        fs, path = storage.open_filesystem(uri, s3)
        info = fs.info(path)
    except Exception:  # unreadable now: iter_clips reports it; never skip such a shard
        return None
    version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return {"size": int(info.get("size") or 0), "version": str(version)}


def read_state(fs, path: str) -> Optional[dict]:
    """The cache state in this output file's footer; None when there is no readable file."""
    return storage.read_parquet_state(fs, path, META_KEY)


def write_table(fs, path: str, table: pa.Table, state: dict, local: bool) -> None:
    """Write ``table`` with ``state`` in its footer; locally via a temporary name + rename (never a torn file;
    an S3 PUT is atomic already)."""
    table = table.replace_schema_metadata({META_KEY: json.dumps(state).encode()})
    target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
    with fs.open(target, "wb") as f:
        pq.write_table(table, f)
    if local:
        fs.mv(target, path)


class _ReadShard:
    """Shard URI -> Arrow table of its text rows (one Ray task per shard)."""

    def __init__(self, s3: S3Config):
        self.s3 = s3

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for uri in batch.column("uri").to_pylist():
            stem = shard_io.shard_stem(uri)
            try:
                for clip in shard_io.iter_clips(uri, self.s3, with_video=False):
                    rows.append({c: clip.get(c) for c in TEXT_SCHEMA.names})
            except Exception as err:  # iter_clips never raises by contract; if it does, count it, do not crash
                rows.append({"key": f"{stem}#read_error", "shard": stem, "error": "read_error",
                             "detail": storage.redact(f"{type(err).__name__}: {err}")})
        for row in rows:
            row["video_id"] = None if row.get("video_id") is None else str(row["video_id"])
            for c in ("start", "end"):
                row[c] = None if row.get(c) is None else float(row[c])
        return rows_to_table(rows, TEXT_SCHEMA)


def _placeholder(src: dict, backend: Backend, prompt_version: str) -> dict:
    row = {c: src.get(c) for c in COLUMNS}
    row.update(decision="quarantined", reason="lost_in_backend", actions=[], verb_altered=[], order_swapped=[],
               detail="the backend returned no row for this clip (a failed block)", backend=backend.name,
               model=backend.model, prompt_version=prompt_version)
    return row


def _curate_wave(wave: list[str], backend: Backend, cfg, state: dict, sources: dict) -> list[dict]:
    """Read, annotate and write one wave of shards; one stats dict per shard."""
    import ray.data

    s3 = cfg.data.s3
    local = not shard_io.is_s3(cfg.data.annotations)
    rows = ray.data.from_items([{"uri": u} for u in wave], override_num_blocks=len(wave)).map_batches(
        _ReadShard(s3), batch_size=1, batch_format="pyarrow").materialize()
    # The annotation rows are small (captions and phrases): the driver gathers them per shard and writes one
    # file each. No shuffle: a groupby would cost more than the whole rules backend.
    by_shard: dict[str, dict[str, dict]] = {shard_io.shard_stem(u): {} for u in wave}
    for batch in backend.annotate(rows).iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.select(COLUMNS).to_pylist():
            by_shard.setdefault(row["shard"], {}).setdefault(row["key"], row)
    read_rows: dict[str, list[dict]] = {}
    for batch in rows.iter_batches(batch_format="pyarrow", batch_size=None):
        for src in batch.to_pylist():
            read_rows.setdefault(src["shard"], []).append(src)
    fs, root = storage.open_filesystem(cfg.data.annotations, s3)
    fs.makedirs(root, exist_ok=True)
    stats = []
    for uri in wave:
        stem = shard_io.shard_stem(uri)
        got = by_shard.get(stem, {})
        srcs = read_rows.get(stem, [])
        broken = [r for r in srcs if r.get("error") in _SHARD_ERRORS]
        if broken:  # the shard could not be read at all: no file, so the next run tries again
            stats.append({"shard": stem, "uri": uri, "unreadable": broken[0].get("detail") or broken[0]["error"]})
            continue
        if not srcs:  # its read block failed (data.max_errored_blocks let Ray skip it) or the tar holds nothing:
            # an empty annotation file would mark the shard curated for good and every clip missing_annotation
            stats.append({"shard": stem, "uri": uri, "unreadable": "no clip was read (empty shard, or its read task "
                                                                    "failed)"})
            continue
        for src in srcs:  # every clip read gets exactly one row, even if its block failed in the backend
            if src["key"] not in got:
                got[src["key"]] = _placeholder(src, backend, state["prompt_version"])
        table = rows_to_table([got[k] for k in sorted(got)], ANNOTATION_SCHEMA)
        counts = counts_of(table.column("decision").to_pylist(), table.column("reason").to_pylist())
        path = annotation_path(root, uri)
        write_table(fs, path, table, {**state, "shard": uri, "source": sources.get(uri), "counts": counts,
                                      "written_at": time.time()}, local)
        stats.append({"shard": stem, "uri": uri, "path": path, "counts": counts})
    return stats


def curate(cfg, progress: bool = True, echo: Callable[[str], None] = log.info) -> dict:
    """Curate every shard under ``cfg.data.shards`` into ``cfg.data.annotations``; return (and write) the summary.

    Raises ``EngineUnavailable`` (before any shard is read) when the backend's engine cannot start.
    """
    import ray.data
    from tqdm import tqdm

    t0 = time.time()
    cur = cfg.curation
    backend = make_backend(cur)
    shards = shard_io.list_shards(cfg.data.shards, cfg.data.s3)
    if not shards:  # an empty location is a wrong path, not a dataset of zero clips
        raise FileNotFoundError(f"no shard (*.tar) at data.shards={storage.redact(cfg.data.shards)}")
    stems = Counter(shard_io.shard_stem(s) for s in shards)
    clashes = [s for s, n in stems.items() if n > 1]
    if clashes:
        raise ValueError(f"shards with the same file name would share an annotation file: {clashes[:5]}")
    fs, root = storage.open_filesystem(cfg.data.annotations, cfg.data.s3)
    state = {"backend": backend.name, "model": backend.model, "prompt_version": cur.prompt_version}
    todo, skipped = [], []
    sources = {uri: source_fingerprint(uri, cfg.data.s3) for uri in shards}
    for uri in shards:
        old = read_state(fs, annotation_path(root, uri))
        current = old is not None and old.get("model") == backend.model and \
            old.get("prompt_version") == cur.prompt_version and \
            sources[uri] is not None and old.get("source") == sources[uri]
        (skipped if current and not cur.force else todo).append((uri, old))
    echo(f"curation: {len(shards)} shards, {len(todo)} to curate, {len(skipped)} already curated from the same shard "
         f"bytes with model={backend.model!r} prompt={cur.prompt_version!r}; backend={backend.name}")
    if todo:
        backend.preflight()
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.max_errored_blocks, ctx.enable_progress_bars)
    ctx.max_errored_blocks, ctx.enable_progress_bars = cur.max_errored_blocks, progress
    stats: list[dict] = []
    try:
        bar = tqdm(total=len(todo), unit="shard", desc="curate", disable=not progress)
        for i in range(0, len(todo), cur.shards_per_wave):
            wave = [uri for uri, _ in todo[i : i + cur.shards_per_wave]]
            stats += _curate_wave(wave, backend, cfg, state, sources)
            bar.update(len(wave))
        bar.close()
    finally:
        ctx.max_errored_blocks, ctx.enable_progress_bars = saved
    per_shard = {s["shard"]: s["counts"] for s in stats if s.get("counts")}
    run_counts = merge_counts(list(per_shard.values()))
    table_counts = merge_counts(list(per_shard.values()) + [old.get("counts", {}) for _, old in skipped])
    summary = {
        "backend": backend.name, "model": backend.model, "prompt_version": cur.prompt_version,
        "shards": cfg.data.shards, "annotations": cfg.data.annotations,
        "shards_total": len(shards), "shards_curated": len(per_shard), "shards_skipped": len(skipped),
        "counts": run_counts, "per_shard": per_shard,
        "unreadable_shards": [{"shard": s["uri"], "detail": s["unreadable"]} for s in stats if s.get("unreadable")],
        "table": table_counts, "seconds": round(time.time() - t0, 3),
    }
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root.rstrip('/')}/summary.json", "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary
