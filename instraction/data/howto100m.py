"""HowTo100M ``caption.json`` + a folder of videos -> shards in the video2dataset layout (whole-video samples).

Each video becomes one sample: ``KEY.mp4`` = the original bytes (no re-encode; PyAV reads the container from
its bytes whatever its extension), ``KEY.json`` = {"key", "video_id", "caption", "start", "end", "segments",
"source"} with the ASR segments, ``KEY.txt`` = all segment text. The reader cuts one clip per segment at read
time. Beside each ``{shard:05d}.tar``: ``{shard:05d}.parquet`` (one row per video tried: key, video_id, status,
error_message, ...) and ``{shard:05d}_stats.json`` (counts by status), as video2dataset writes them.

Nothing is lost silently and no single bad input stops the conversion. Every video tried ends in exactly one
status: ``success``, ``missing_video`` (no file for the id), ``malformed_captions`` (the entry is not
{"start": [...], "end": [...], "text": [...]} with lists), ``unreadable_video`` (an I/O error reading the file, or
PyAV cannot open it; logged with the file name), ``empty_video`` or ``no_segments``. Every caption segment of a
video whose captions were cleaned ends in exactly one ``segments_*`` count: ``written``, ``mismatched_lists`` (past
the shortest of the three lists), ``bad_timestamps`` (not a number, not finite, start < 0 or end <= start),
``empty_text``, ``bad_text`` (not encodable as UTF-8) or ``out_of_range`` (starts at or after the video's end).
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections import Counter
from typing import Any, Callable, Optional

from instraction import storage
from instraction.data import shards as shard_io
from instraction.data.config import DataConfig

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")


def load_captions(path: str, data: DataConfig) -> dict[str, dict]:
    try:
        captions = storage.read_json(path, data.s3)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"{path}: caption.json is not valid JSON: {err}") from None
    if not isinstance(captions, dict):
        raise ValueError(f"{path}: caption.json must map video_id -> {{start, end, text}}")
    return captions


def index_videos(folder: str, data: DataConfig) -> dict[str, str]:
    """``{video_id: path}`` of the videos in ``folder`` (one listing; .mp4 preferred over .webm over .mkv)."""
    fs, root = storage.open_filesystem(folder, data.s3)
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


def caption_lists(entry: Any) -> tuple[list, list, list]:
    """A caption entry's ``(starts, ends, texts)``; a missing or null list is empty. ValueError when the entry is
    not a dict of lists (e.g. scalars, or a string, whose characters ``zip`` would take as segments)."""
    if not isinstance(entry, dict):
        raise ValueError(f"caption entry is a {type(entry).__name__}, not {{start, end, text}}")
    lists = []
    for name in ("start", "end", "text"):
        value = entry.get(name)
        if value is not None and not isinstance(value, (list, tuple)):
            raise ValueError(f"caption {name!r} is a {type(value).__name__}, not a list")
        lists.append(list(value or []))
    return lists[0], lists[1], lists[2]


def _seconds(value: Any) -> Optional[float]:
    """``value`` as finite seconds, or None (the reader rejects the same: shards.py ``bad_json``)."""
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def clean_segments(entry: dict, duration: Optional[float], counts: Counter) -> list[dict]:
    """HowTo100M's parallel start/end/text lists -> ``[{"start","end","text"}]``. Each input segment lands in
    exactly one ``counts`` bucket (``segments_written`` or a reason it was dropped, see the module docstring); a
    window overrunning the video's end is clipped to it. ValueError (nothing counted) when the lists are malformed
    (:func:`caption_lists`)."""
    starts, ends, texts = caption_lists(entry)
    n = min(len(starts), len(ends), len(texts))
    if max(len(starts), len(ends), len(texts)) > n:
        counts["segments_mismatched_lists"] += max(len(starts), len(ends), len(texts)) - n
    out = []
    for start, end, text in zip(starts[:n], ends[:n], texts[:n]):
        text = " ".join(str(text).split()) if text is not None else ""
        start, end = _seconds(start), _seconds(end)
        # Checked before clipping: min(nan, duration) is nan, and a negative start only fails in the decoder.
        if start is None or end is None or start < 0 or end <= start:
            counts["segments_bad_timestamps"] += 1
            continue
        if not text:
            counts["segments_empty_text"] += 1
            continue
        if not shard_io.valid_unicode(text):
            counts["segments_bad_text"] += 1
            continue
        if duration is not None:
            end = min(end, duration)
        start, end = round(start, 3), round(end, 3)
        if end <= start:
            counts["segments_out_of_range"] += 1
            continue
        out.append({"start": start, "end": end, "text": text})
    counts["segments_written"] += len(out)
    return out


class _ShardWriter:
    """Streams samples into ``{index:05d}.tar`` as they come (a shard's videos are never all held in memory);
    :meth:`finish` closes the tar and writes its ``.parquet`` and ``_stats.json`` beside it."""

    def __init__(self, fs, root: str, progress: Optional[Callable[[dict], None]]):
        self.fs, self.root, self.progress = fs, root, progress
        self.index, self.records, self.samples = 0, [], 0
        self.file = self.tar = None
        self.started = time.time()

    def add(self, record: dict, sample: Optional[dict] = None) -> None:
        import webdataset as wds

        if self.tar is None:
            self.file = self.fs.open(f"{self.root}/{self.index:05d}.tar", "wb")
            self.tar = wds.TarWriter(self.file, encoder=False)
        if sample is not None:
            self.tar.write(sample)
            self.samples += 1
        self.records.append(record)

    def finish(self) -> None:
        """Complete the open shard, if any (a shard holds at least one tried video, written or not)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.tar is None:
            return
        self.tar.close()  # TarWriter does not close a file object it was given
        self.file.close()
        self.file = self.tar = None
        with self.fs.open(f"{self.root}/{self.index:05d}.parquet", "wb") as f:
            pq.write_table(pa.Table.from_pylist(self.records), f)
        status = Counter(r["status"] for r in self.records)
        stats = {"count": len(self.records), "successes": status.get("success", 0), "failed_to_download": sum(
            v for k, v in status.items() if k != "success"), "status_dict": dict(status),
            "start_time": self.started, "end_time": time.time(), "duration": time.time() - self.started}
        with self.fs.open(f"{self.root}/{self.index:05d}_stats.json", "w") as f:
            json.dump(stats, f, indent=2)
        if self.progress:
            self.progress({"shard": self.index, "samples": self.samples, "tried": len(self.records)})
        self.index, self.records, self.samples, self.started = self.index + 1, [], 0, time.time()

    def abandon(self) -> None:
        """Close the open tar's file after an error (its shard gets no parquet or stats)."""
        if self.file is not None:
            self.file.close()
            self.file = self.tar = None


def _read_video(fs, path: str) -> bytes:
    """The file's bytes; LookupError("unreadable_video", ...) on any read error, logged with the file name."""
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except Exception as err:  # OSError locally; fsspec backends (s3fs, aiohttp, botocore) raise their own types
        message = storage.redact(f"{path}: {type(err).__name__}: {err}")
        log.warning("skipping unreadable video %s", message)
        raise LookupError("unreadable_video", message) from None


def convert(data: DataConfig, progress: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Convert ``data.convert.captions`` + ``data.convert.videos`` into shards at ``data.shards``.

    Returns ``{"shards", "videos", "written", "status": {status: n}, "segments": {...}, "missing": [ids...]}``
    (``missing`` capped at 1000 ids); ``status`` sums to ``videos``."""
    conv = data.convert
    if not conv.captions or not conv.videos:
        raise ValueError("set data.convert.captions and data.convert.videos")
    out_fs, root = storage.open_filesystem(data.shards, data.s3)
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
    in_fs, _ = storage.open_filesystem(conv.videos, data.s3)
    ids = list(captions)[: conv.max_videos or None]
    width = max(4, len(str(conv.samples_per_shard - 1)))
    status, segs, missing = Counter(), Counter(), []
    writer = _ShardWriter(out_fs, root, progress)
    try:
        for video_id in ids:
            key = f"{writer.index:05d}{len(writer.records):0{width}d}"
            record = {"key": key, "video_id": video_id, "status": "success", "error_message": None,
                      "url": videos.get(video_id), "num_segments": 0, "duration": None}
            sample = None
            try:
                if video_id not in videos:
                    raise LookupError("missing_video", "no video file for this id")
                try:  # before reading the video: a bad entry costs no download
                    caption_lists(captions[video_id])
                except ValueError as err:
                    raise LookupError("malformed_captions", str(err)) from None
                blob = _read_video(in_fs, videos[video_id])
                if not blob:
                    raise LookupError("empty_video", "zero-byte video file")
                duration = None
                if conv.probe:
                    try:
                        duration = probe_duration(blob)
                    except ValueError as err:
                        raise LookupError("unreadable_video", str(err)) from None
                segments = clean_segments(captions[video_id], duration, segs)
                if not segments:
                    raise LookupError("no_segments", "no usable caption segment")
            except LookupError as err:
                reason, message = err.args
                record.update(status=reason, error_message=storage.redact(message))
                status[reason] += 1
                if reason == "missing_video" and len(missing) < 1000:
                    missing.append(video_id)
            else:
                text = " ".join(s["text"] for s in segments)
                meta = {"key": key, "video_id": video_id, "caption": text, "start": segments[0]["start"],
                        "end": segments[-1]["end"], "segments": segments, "source": "howto100m"}
                sample = {"__key__": key, "mp4": blob, "json": json.dumps(meta).encode("utf-8"),
                          "txt": text.encode("utf-8")}
                record.update(num_segments=len(segments), duration=duration)
                status["success"] += 1
            writer.add(record, sample)
            if len(writer.records) >= conv.samples_per_shard:
                writer.finish()
        writer.finish()
    except BaseException:
        writer.abandon()
        raise
    return {"shards": writer.index, "videos": len(ids), "written": status.get("success", 0),
            "status": dict(status), "segments": dict(segs), "missing": missing}
