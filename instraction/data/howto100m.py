"""HowTo100M ``caption.json`` + a folder of videos -> shards in the video2dataset layout (whole-video samples).

Each video becomes one sample: ``KEY.mp4`` = the original bytes (no re-encode; PyAV reads the container from
its bytes whatever its extension), ``KEY.json`` = {"key", "video_id", "caption", "start", "end", "segments",
"source"} with the ASR segments, ``KEY.txt`` = all segment text. The reader cuts one clip per segment at read
time. Beside each ``{shard:05d}.tar``: ``{shard:05d}.parquet`` (one row per video tried: key, video_id, status,
error_message, ...) and ``{shard:05d}_stats.json`` (counts by status), as video2dataset writes them.

Nothing is lost silently: videos missing from the folder, unreadable videos, and empty or out-of-range segments
are counted in the returned stats (and per-shard files).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from typing import Any, Callable, Optional

from instraction.data import shards as shard_io
from instraction.data.config import DataConfig

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")


def load_captions(path: str, data: DataConfig) -> dict[str, dict]:
    fs, p = shard_io.open_filesystem(path, data.s3)
    with fs.open(p, "rb") as f:
        captions = json.load(f)
    if not isinstance(captions, dict):
        raise ValueError(f"{path}: caption.json must map video_id -> {{start, end, text}}")
    return captions


def index_videos(folder: str, data: DataConfig) -> dict[str, str]:
    """``{video_id: path}`` of the videos in ``folder`` (one listing; .mp4 preferred over .webm over .mkv)."""
    fs, root = shard_io.open_filesystem(folder, data.s3)
    found: dict[str, str] = {}
    for path in sorted(fs.ls(root, detail=False)):
        name = str(path).rsplit("/", 1)[-1]
        for suffix in VIDEO_SUFFIXES:
            if name.endswith(suffix):
                stem = name[: -len(suffix)]
                if stem not in found or VIDEO_SUFFIXES.index(suffix) < _rank(found[stem]):
                    found[stem] = str(path)
    return found


def _rank(path: str) -> int:
    return next(i for i, s in enumerate(VIDEO_SUFFIXES) if path.endswith(s))


def probe_duration(data: bytes) -> float:
    """Seconds of the first video stream; ValueError when PyAV cannot read it."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000  # av.time_base
            raise ValueError("unknown duration")
    except ValueError:
        raise
    except Exception as err:  # av.error.* : corrupt container
        raise ValueError(f"{type(err).__name__}: {err}") from None


def clean_segments(entry: dict, duration: Optional[float], counts: Counter) -> list[dict]:
    """HowTo100M's parallel start/end/text lists -> ``[{"start","end","text"}]``: empty text and windows past
    the video's end are dropped (counted); a window overrunning the end is clipped to it."""
    starts, ends, texts = entry.get("start") or [], entry.get("end") or [], entry.get("text") or []
    if not (len(starts) == len(ends) == len(texts)):
        counts["segments_mismatched_lists"] += max(len(starts), len(ends), len(texts))
        n = min(len(starts), len(ends), len(texts))
        starts, ends, texts = starts[:n], ends[:n], texts[:n]
    out = []
    for start, end, text in zip(starts, ends, texts):
        text = " ".join(str(text).split()) if text is not None else ""
        try:
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            counts["segments_bad_time"] += 1
            continue
        if not text:
            counts["segments_empty_text"] += 1
            continue
        if duration is not None:
            end = min(end, duration)
        if end <= start:
            counts["segments_out_of_range"] += 1
            continue
        out.append({"start": round(start, 3), "end": round(end, 3), "text": text})
    counts["segments_written"] += len(out)
    return out


def _write_shard(root_fs, root: str, index: int, samples: list[dict], records: list[dict], started: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    with root_fs.open(f"{root}/{index:05d}.tar", "wb") as f:
        writer = wds.TarWriter(f, encoder=False)
        for sample in samples:
            writer.write(sample)
        writer.close()
    with root_fs.open(f"{root}/{index:05d}.parquet", "wb") as f:
        pq.write_table(pa.Table.from_pylist(records), f)
    status = Counter(r["status"] for r in records)
    stats = {"count": len(records), "successes": status.get("success", 0), "failed_to_download": sum(
        v for k, v in status.items() if k != "success"), "status_dict": dict(status),
        "start_time": started, "end_time": time.time(), "duration": time.time() - started}
    with root_fs.open(f"{root}/{index:05d}_stats.json", "w") as f:
        json.dump(stats, f, indent=2)


def convert(data: DataConfig, progress: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Convert ``data.convert.captions`` + ``data.convert.videos`` into shards at ``data.shards``.

    Returns ``{"shards", "videos", "written", "status": {status: n}, "segments": {...}, "missing": [ids...]}``
    (``missing`` capped at 1000 ids)."""
    conv = data.convert
    if not conv.captions or not conv.videos:
        raise ValueError("set data.convert.captions and data.convert.videos")
    out_fs, root = shard_io.open_filesystem(data.shards, data.s3)
    if not shard_io.is_s3(data.shards):
        out_fs.makedirs(root, exist_ok=True)
    try:
        existing = shard_io.list_shards(data.shards, data.s3)
    except FileNotFoundError:  # an S3 prefix exists only once something is written under it
        existing = []
    if existing and not conv.overwrite:
        raise FileExistsError(f"{data.shards} already holds shards; set data.convert.overwrite=true to replace them")
    captions = load_captions(conv.captions, data)
    videos = index_videos(conv.videos, data)
    in_fs, _ = shard_io.open_filesystem(conv.videos, data.s3)
    ids = list(captions)[: conv.max_videos or None]
    width = max(4, len(str(conv.samples_per_shard - 1)))
    status, segs, missing = Counter(), Counter(), []
    shard_index, samples, records, started = 0, [], [], time.time()

    def flush():
        nonlocal shard_index, samples, records, started
        if records:
            _write_shard(out_fs, root, shard_index, samples, records, started)
            if progress:
                progress({"shard": shard_index, "samples": len(samples), "tried": len(records)})
            shard_index, samples, records, started = shard_index + 1, [], [], time.time()

    for video_id in ids:
        key = f"{shard_index:05d}{len(records):0{width}d}"
        record = {"key": key, "video_id": video_id, "status": "success", "error_message": None,
                  "url": videos.get(video_id), "num_segments": 0, "duration": None}
        try:
            if video_id not in videos:
                raise LookupError("missing_video", "no video file for this id")
            with in_fs.open(videos[video_id], "rb") as f:
                blob = f.read()
            if not blob:
                raise LookupError("empty_video", "zero-byte video file")
            duration = None
            if conv.probe:
                try:
                    duration = probe_duration(blob)
                except ValueError as err:
                    raise LookupError("unreadable_video", str(err)) from None
            entry = captions[video_id] if isinstance(captions[video_id], dict) else {}
            segments = clean_segments(entry, duration, segs)
            if not segments:
                raise LookupError("no_segments", "no usable caption segment")
        except LookupError as err:
            reason, message = err.args
            record.update(status=reason, error_message=shard_io.redact(message))
            status[reason] += 1
            if reason == "missing_video" and len(missing) < 1000:
                missing.append(video_id)
        else:
            text = " ".join(s["text"] for s in segments)
            meta = {"key": key, "video_id": video_id, "caption": text, "start": segments[0]["start"],
                    "end": segments[-1]["end"], "segments": segments, "source": "howto100m"}
            samples.append({"__key__": key, "mp4": blob, "json": json.dumps(meta).encode("utf-8"),
                            "txt": text.encode("utf-8")})
            record.update(num_segments=len(segments), duration=duration)
            status["success"] += 1
        records.append(record)
        if len(records) >= conv.samples_per_shard:
            flush()
    flush()
    return {"shards": shard_index, "videos": len(ids), "written": status.get("success", 0),
            "status": dict(status), "segments": dict(segs), "missing": missing}
