"""The frames store: each kept clip's sampled frames, decoded once, so training reads frames instead of video.

    summary = extract_frames(cfg)     # jobs/extract_frames.py; Ray must already be initialised
    cfg.data.frames = "<store>"       # then pipeline.training_dataset reads the store (same rows as decoding)

Why: at paper settings (8 frames at 224 from 854x480 long-GOP H.264) decoding costs ~50 CPU cores per GPU; reading
JPEG frames a few (README "Data feed at paper settings"). The paper fixes the sampling (8 frames uniform over the
caption's window, no jitter; mirror and shift run later on the uint8 frames), so the stored frames are the frames
training would decode (exactly, with ``data.frames_quality=0``).

Layout: ``<data.frames>/<shard stem>.parquet``, one per source shard, rows in tar order: ``key`` string,
``frames`` list<binary> (``data.num_frames`` JPEG images, or raw uint8 [size, size, 3] bytes at quality 0; null
when the clip could not be decoded), ``error`` string (that clip's drop reason, e.g. ``undecodable_video``, so
training counts it under the same reason as decoding would). Uncompressed columns: JPEG does not compress further
and raw frames would cost a decompression per read. The footer holds the state (:func:`frame_settings`, the shard's
and its annotation file's size/version, this shard's counts): a re-run skips a shard whose file matches all of
them. Parquet rather than a tar: the training read task looks clips up by key (a column read, then one row group
at a time), and the state and counts sit in the footer as for the annotation table.

Graph: ``from_items(shard URIs to extract)``, one block per shard, ``map(extract_shard)``: one Ray task per shard
streams the tar, joins the annotation table exactly as training does (``pipeline._joined_clips``, split "all", so a
change of the bench holdout does not invalidate the store), decodes each kept clip once (``pipeline.decode_window``,
the decoder of the training actors) and writes row groups as it goes (memory: one row group). Every clip read ends
in exactly one of written / dropped[reason]; a task never raises (a failure becomes the shard's ``error``, no file
is left behind and the next run retries). ``<data.frames>/summary.json``: this run's counts, the whole store's
(skipped shards' from their footers), unreadable and failed shards.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections import Counter
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from instraction import storage
from instraction.data import pipeline
from instraction.data import shards as shard_io
from instraction.data.config import DataConfig

log = logging.getLogger(__name__)

FORMAT = 1
META_KEY = b"instraction.frames"
SCHEMA = pa.schema([("key", pa.string()), ("frames", pa.list_(pa.binary())), ("error", pa.string())])
ROW_GROUP_CLIPS = 32
"""Clips per row group: the unit a training read task holds in memory (32 x 417 kB at q95 4:4:4 = 13 MB)."""
_UNREADABLE = ("unreadable_shard",)


# ---------------------------------------------------------------------------------------------- codec


def frame_settings(data: DataConfig) -> dict:
    """What the stored frames depend on besides the shard: part of every file's state."""
    return {"format": FORMAT, "num_frames": data.num_frames, "size": data.size, "quality": data.frames_quality,
            "subsampling": data.frames_subsampling if data.frames_quality else None}


def encode_clip(frames: np.ndarray, quality: int, subsampling: str = "444") -> list[bytes]:
    """uint8 [T,H,W,3] -> one blob per frame: JPEG (PIL / libjpeg-turbo) at ``quality`` and chroma ``subsampling``
    (444 | 422 | 420), raw bytes at quality 0."""
    if quality == 0:
        return [np.ascontiguousarray(f).tobytes() for f in frames]
    from PIL import Image

    subsampling = ":".join(str(subsampling))  # PIL's spelling: "4:4:4"
    out = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=quality, subsampling=subsampling)
        out.append(buf.getvalue())
    return out


def decode_clip(blobs: list[bytes], num_frames: int, size: int, raw: bool) -> np.ndarray:
    """Blobs of :func:`encode_clip` (``raw``: quality 0) -> uint8 [T, size, size, 3]; ValueError when they are not
    such a clip."""
    if blobs is None or len(blobs) != num_frames:
        raise ValueError(f"expected {num_frames} frames, got {None if blobs is None else len(blobs)}")
    out = np.empty((num_frames, size, size, 3), np.uint8)
    for i, blob in enumerate(blobs):
        if raw:
            if len(blob) != size * size * 3:
                raise ValueError(f"raw frame {i} holds {len(blob)} bytes, expected {size * size * 3}")
            out[i] = np.frombuffer(blob, np.uint8).reshape(size, size, 3)
            continue
        from PIL import Image

        try:
            with Image.open(io.BytesIO(blob)) as img:
                arr = np.asarray(img.convert("RGB"))
        except Exception as err:  # PIL raises several types on bad bytes
            raise ValueError(f"frame {i}: {type(err).__name__}: {err}") from None
        if arr.shape != (size, size, 3):
            raise ValueError(f"frame {i} is {arr.shape}, expected {(size, size, 3)}")
        out[i] = arr
    return out


# ---------------------------------------------------------------------------------------------- files


def frames_path(root: str, shard_uri: str) -> str:
    return f"{root.rstrip('/')}/{shard_io.shard_stem(shard_uri)}.parquet"


def read_state(fs, path: str) -> Optional[dict]:
    """The cache state in this output file's footer; None when there is no readable file."""
    return storage.read_parquet_state(fs, path, META_KEY)


def shard_sources(shard_uri: str, data: DataConfig) -> dict:
    """Size/version of the shard and of its annotation file (None when absent: the ground truth stands in)."""
    from instraction.curation.pipeline import annotation_path, source_fingerprint

    ann = source_fingerprint(annotation_path(data.annotations, shard_uri), data.s3) if data.annotations else None
    return {"shard": source_fingerprint(shard_uri, data.s3), "annotations": ann}


def is_current(state: Optional[dict], settings: dict, sources: dict) -> bool:
    return (state is not None and state.get("settings") == settings and sources["shard"] is not None
            and state.get("sources") == sources)


class _Writer:
    """Row groups of one shard's frames file; the file appears only when complete (tmp + rename locally; an S3
    upload is discarded on failure, so no torn object is left)."""

    def __init__(self, fs, path: str, local: bool):
        self.fs, self.path, self.local = fs, path, local
        self.target = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if local else path
        self.file = fs.open(self.target, "wb")
        self.writer = pq.ParquetWriter(self.file, SCHEMA, compression="none")
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP_CLIPS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, SCHEMA))
            self.rows = []

    def close(self, state: dict) -> None:
        self.flush()
        self.writer.add_key_value_metadata({META_KEY: json.dumps(state)})
        self.writer.close()
        self.file.close()
        if self.local:
            self.fs.mv(self.target, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass
        if hasattr(self.file, "discard"):  # s3fs: abort the multipart upload instead of committing it
            self.file.discard()
        else:
            self.file.close()
        if self.local and self.fs.exists(self.target):
            self.fs.rm(self.target)


# ---------------------------------------------------------------------------------------------- extraction


def extract_shard(item: dict, *, data: DataConfig, settings: dict, key_limit: int = 1000) -> dict:
    """Ray Data ``map`` body: one shard -> its frames file; returns ``{"shard", "summary" (json)}``. Never raises."""
    uri, t0 = item["shard"], time.time()
    tally = pipeline._ShardTally(key_limit)
    written, writer = 0, None
    try:
        sources = shard_sources(uri, data)
        fs, root = storage.open_filesystem(data.frames, data.s3)
        for clip, ann in pipeline._joined_clips(uri, data, (0.0, 0), "all", True, tally):
            if writer is None:
                fs.makedirs(root, exist_ok=True)
                writer = _Writer(fs, frames_path(root, uri), local=not shard_io.is_s3(data.frames))
            frames, reason = pipeline.decode_window(clip["mp4"], pipeline._window(clip, ann), data)
            if reason:
                tally.drop(reason, clip["key"])
                writer.add({"key": clip["key"], "frames": None, "error": reason})
                continue
            writer.add({"key": clip["key"], "frames": encode_clip(frames, data.frames_quality,
                                                                  data.frames_subsampling), "error": None})
            written += 1
        counts = {"clips_read": tally.clips_read, "written": written, "dropped": dict(sorted(tally.counts.items())),
                  "dropped_total": sum(tally.counts.values())}
        summary = {**counts, "dropped_keys": dict(tally.keys), "seconds": round(time.time() - t0, 3)}
        unreadable = [r for r in _UNREADABLE if tally.counts.get(r)]
        if unreadable or tally.clips_read == 0:  # no file, so the next run tries again (as curation does)
            if writer is not None:
                writer.abort()
            summary["unreadable"] = unreadable[0] if unreadable else "no clip was read (empty shard)"
        else:
            if writer is None:  # every clip was dropped before decoding: an empty file still marks it current
                fs.makedirs(root, exist_ok=True)
                writer = _Writer(fs, frames_path(root, uri), local=not shard_io.is_s3(data.frames))
            writer.close({"settings": settings, "sources": sources, "shard": uri, "counts": counts,
                          "written_at": time.time()})
            summary["path"] = frames_path(root, uri)
    except Exception as err:  # storage errors and the like: this shard fails, the job goes on
        if writer is not None:
            try:
                writer.abort()
            except Exception:
                pass
        summary = {"error": storage.redact(f"{type(err).__name__}: {err}"), "clips_read": tally.clips_read}
        log.warning("frames extraction failed for %s: %s", storage.redact(uri), summary["error"])
    return {"shard": uri, "summary": json.dumps(summary)}


def _add(total: dict, counts: dict) -> None:
    total["clips_read"] += counts.get("clips_read", 0)
    total["written"] += counts.get("written", 0)
    total["dropped"].update(counts.get("dropped", {}))


def _totals(parts: list[dict]) -> dict:
    total = {"clips_read": 0, "written": 0, "dropped": Counter()}
    for part in parts:
        _add(total, part)
    return {**total, "dropped": dict(sorted(total["dropped"].items())), "dropped_total": sum(total["dropped"].values())}


def extract_frames(cfg, progress: bool = True, echo: Callable[[str], None] = log.info) -> dict:
    """Write the frames store of every shard under ``cfg.data.shards`` into ``cfg.data.frames``; skip shards whose
    file is current; return (and write as summary.json) the counts."""
    import ray.data

    d, t0 = cfg.data, time.time()
    if not d.frames:
        raise ValueError("data.frames is not set: where should the frames store go?")
    shards = shard_io.list_shards(d.shards, d.s3)
    if not shards:
        raise FileNotFoundError(f"no shard (*.tar) at data.shards={storage.redact(d.shards)}")
    clashes = [s for s, n in Counter(shard_io.shard_stem(s) for s in shards).items() if n > 1]
    if clashes:
        raise ValueError(f"shards with the same file name would share a frames file: {clashes[:5]}")
    settings = frame_settings(d)
    fs, root = storage.open_filesystem(d.frames, d.s3)
    todo, skipped = [], {}
    for uri in shards:
        state = read_state(fs, frames_path(root, uri))
        if is_current(state, settings, shard_sources(uri, d)):
            skipped[uri] = state.get("counts", {})
        else:
            todo.append(uri)
    echo(f"frames: {len(shards)} shards, {len(todo)} to extract, {len(skipped)} current "
         f"({d.num_frames} frames at {d.size}, quality {d.frames_quality}) -> {storage.redact(d.frames)}")
    per_shard: dict[str, dict] = {}
    if todo:
        ctx = ray.data.DataContext.get_current()
        saved, ctx.enable_progress_bars = ctx.enable_progress_bars, progress
        try:
            ds = ray.data.from_items([{"shard": u} for u in todo], override_num_blocks=len(todo)).map(
                extract_shard, fn_kwargs={"data": d, "settings": settings}, num_cpus=d.decode_num_cpus)
            for row in ds.iter_rows():
                per_shard[row["shard"]] = json.loads(row["summary"])
        finally:
            ctx.enable_progress_bars = saved
    done = {u: s for u, s in per_shard.items() if "path" in s}
    summary = {
        "frames": d.frames, "shards": d.shards, "settings": settings,
        "shards_total": len(shards), "shards_extracted": len(done), "shards_skipped": len(skipped),
        # a failed shard (its task's error) has no counts: listed apart, so clips_read == written + dropped_total
        "counts": _totals([s for s in per_shard.values() if "error" not in s]),
        "store": _totals(list(done.values()) + list(skipped.values())),
        "unreadable_shards": [{"shard": u, "detail": s["unreadable"]} for u, s in per_shard.items()
                              if "unreadable" in s],
        "failed_shards": [{"shard": u, "detail": s["error"]} for u, s in per_shard.items() if "error" in s],
        "per_shard": {shard_io.shard_stem(u): s for u, s in per_shard.items()},
        "seconds": round(time.time() - t0, 3),
    }
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root.rstrip('/')}/summary.json", "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


# ---------------------------------------------------------------------------------------------- training read


class StoreReader:
    """One shard's frames file for a training read task: ``get(key) -> (blobs, None) | (None, reason)``.

    Reasons: ``missing_frames`` (no file, or no row for the key: run jobs/extract_frames.py), ``stale_frames``
    (the file was extracted from other shard bytes or with other settings), ``bad_frames_file`` (unreadable), or
    the reason extraction dropped the clip for (``undecodable_video``...). Reads the key/error columns once and
    then one row group at a time (rows are in tar order, so each row group is read once)."""

    def __init__(self, shard_uri: str, data: DataConfig):
        self.error: Optional[str] = None
        self.file = self.meta = None
        self.index: dict[str, tuple[int, int, Optional[str]]] = {}
        self.group: tuple[int, Optional[list]] = (-1, None)
        try:
            fs, path = storage.open_filesystem(frames_path(data.frames, shard_uri), data.s3)
            if not fs.exists(path):
                self.error = "missing_frames"
                return
            self.file = pq.ParquetFile(fs.open(path, "rb"))
            meta = self.file.metadata.metadata or {}
            state = json.loads(meta[META_KEY]) if META_KEY in meta else {}
            from instraction.curation.pipeline import source_fingerprint

            if state.get("settings") != frame_settings(data) or \
                    (state.get("sources") or {}).get("shard") != source_fingerprint(shard_uri, data.s3):
                self.error = "stale_frames"
                return
            for g in range(self.file.num_row_groups):
                part = self.file.read_row_group(g, columns=["key", "error"])
                for i, (key, err) in enumerate(zip(part.column("key").to_pylist(), part.column("error").to_pylist())):
                    self.index[key] = (g, i, err)
        except Exception as err:
            log.warning("unreadable frames file for %s", storage.redact(f"{shard_uri}: {type(err).__name__}: {err}"))
            self.error = "bad_frames_file"

    def get(self, key: str) -> tuple[Optional[list[bytes]], Optional[str]]:
        if self.error:
            return None, self.error
        where = self.index.get(key)
        if where is None:
            return None, "missing_frames"
        g, i, err = where
        if err:
            return None, err
        if self.group[0] != g:
            try:
                self.group = (g, self.file.read_row_group(g, columns=["frames"]).column("frames").to_pylist())
            except Exception as e:
                log.warning("unreadable row group %d of a frames file: %s", g, storage.redact(str(e)))
                return None, "bad_frames_file"
        return self.group[1][i], None
