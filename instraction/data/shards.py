"""Discover and stream video2dataset-layout shards from a directory, a glob or s3://, one row per clip.

Layout (team contract): ``{shard:05d}.tar`` holds, per sample, ``KEY.mp4`` (H.264; any container PyAV reads),
``KEY.json`` ({"key", "video_id", "caption", "start", "end", "segments": [...], "synthkitchen": {...}}) and
``KEY.txt``. A key is the member name up to the first dot of its basename (webdataset's convention) and a sample
is a run of consecutive members sharing a key.

A sample whose json holds more than one segment is a *whole video*: it expands into one clip per segment, key
``f"{KEY}_{i:03d}"``, window = that segment's ``[start, end)``; the video bytes are shared by its clips and the
window is cut at decode time by seeking (no re-encode).

Bad input never raises out of :func:`iter_clips`: it becomes a row whose ``error`` names the reason, so every
loss is counted. Reasons: ``unreadable_shard`` (cannot open; key ``<shard>#unreadable``), ``corrupt_tar``
(truncated or garbage tar; key ``<shard>#corrupt_tar``, emitted after the good samples read before the break;
``video_key`` names the sample that was being read), ``missing_mp4``, ``empty_video``, ``missing_json``,
``bad_json`` (also: times that are not finite, non-negative seconds; a malformed ``synthkitchen`` ground truth),
``bad_caption`` (empty, non-UTF-8 bytes, or text that is not valid Unicode, e.g. a lone surrogate from a ``\ud800``
escape) and ``duplicate_key`` (a key seen before in the shard, as a sample or as a whole video's clip: keyed
``<key>#duplicate``, ``<key>#duplicate2``, ...). Sample-level errors give one row keyed by the sample key; an
empty caption in one segment of a whole video drops that clip only; anything else a sample raises becomes one
``bad_sample`` row, and the rest of the shard is still read. Member names that are not UTF-8 are read with
backslash escapes.

Credentials come from the standard AWS chain (env, profile, instance role) and never enter a message: every
error text passes through :func:`redact`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tarfile
from typing import Any, Iterator, Optional

from instraction.data.config import S3Config
from instraction.storage import is_s3, open_filesystem, redact

log = logging.getLogger(__name__)

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "m4v", "avi")
"""Member extensions read as the sample's video (the row field is called ``mp4`` whatever the container)."""

_BLOCK = 512
_GLOB_CHARS = re.compile(r"[*?\[]")


# ---------------------------------------------------------------------------------------------- filesystem


def _uri(spec: str, path: str) -> str:
    return f"s3://{path}" if is_s3(spec) else path


def shard_stem(shard_uri: str) -> str:
    """``".../00012.tar"`` -> ``"00012"``: the shard's name in rows and in the annotation table's file names."""
    name = str(shard_uri).rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".tar")] if name.endswith(".tar") else name


def list_shards(spec: str, s3: Optional[S3Config] = None) -> list[str]:
    """Sorted ``.tar`` shard URIs (local absolute paths or ``s3://bucket/key``) under a directory / prefix, matching
    a glob, or the one file named. An existing location without shards gives ``[]``; a missing one raises
    :class:`FileNotFoundError` (credentials redacted)."""
    fs, path = open_filesystem(spec, s3)
    try:
        if _GLOB_CHARS.search(path):
            found = [p for p in fs.glob(path) if str(p).endswith(".tar")]
        elif path.endswith(".tar") and fs.isfile(path):
            found = [path]
        elif fs.isdir(path):
            found = [p for p in fs.ls(path, detail=False) if str(p).endswith(".tar")]
        else:
            raise FileNotFoundError(f"no shard location at {spec!r}")
    except FileNotFoundError as err:
        raise FileNotFoundError(redact(str(err))) from None
    except Exception as err:  # network / permission errors: say where, never with credentials
        raise OSError(redact(f"cannot list shards at {spec!r}: {type(err).__name__}: {err}")) from None
    return sorted(_uri(spec, str(p)) for p in found)


# ---------------------------------------------------------------------------------------------- tar stream


class _CorruptTar(Exception):
    """The tar stream broke (truncated, bad checksum, garbage): samples after this point are lost.

    ``member`` names the member whose header was read when its data came up short (None otherwise): a member
    with a new key closes the previous sample, which is then complete and still counts as good.
    """

    def __init__(self, message: str, member: Optional[str] = None):
        super().__init__(message)
        self.member = member


def _read_exact(f, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _skip(f, n: int) -> None:
    if n <= 0:
        return
    if getattr(f, "seekable", lambda: False)():
        f.seek(n, os.SEEK_CUR)  # past EOF is fine: the next header read comes back empty -> truncated
    else:
        _read_exact(f, n)


def _pax_path(buf: bytes) -> Optional[str]:
    """The ``path`` record of a POSIX pax extended header (``"%d path=%s\\n"`` records)."""
    pos = 0
    while pos < len(buf):
        space = buf.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(buf[pos:space])
        except ValueError:
            raise _CorruptTar("bad pax header") from None
        if length <= 0:
            raise _CorruptTar("bad pax header")
        record = buf[space + 1 : pos + length - 1]
        name, _, value = record.partition(b"=")
        if name == b"path":
            return value.decode("utf-8", "backslashreplace")
        pos += length
    return None


def _iter_members(f, with_data) -> Iterator[tuple[str, int, Optional[bytes]]]:
    """Yield ``(name, size, data)`` for each regular file of a tar stream; ``data`` is None when
    ``with_data(name)`` is false (the member is skipped by seeking). Raises :class:`_CorruptTar` when the stream
    ends before the end-of-archive block, a header fails its checksum or a member is cut short.

    Our own loop over ``tarfile.TarInfo.frombuf`` because ``tarfile`` treats a bad header or a truncation after
    the first member as a normal end of archive, which would lose samples silently.
    """
    long_name: Optional[str] = None
    while True:
        block = _read_exact(f, _BLOCK)
        if len(block) == 0:
            raise _CorruptTar("archive ends without its end-of-archive block (truncated)")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "backslashreplace")  # keys must be valid UTF-8
        except tarfile.EOFHeaderError:
            return  # the zero block that closes a well-formed archive
        except tarfile.HeaderError as err:
            raise _CorruptTar(f"bad tar header: {err}") from None
        padded = -(-info.size // _BLOCK) * _BLOCK
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
            buf = _read_exact(f, padded)
            if len(buf) < padded:
                raise _CorruptTar("truncated long-name header")
            raw = buf[: info.size]
            long_name = raw.rstrip(b"\0").decode("utf-8", "backslashreplace") if info.type == tarfile.GNUTYPE_LONGNAME \
                else _pax_path(raw) or long_name
            continue
        name, long_name = long_name or info.name, None
        if info.type not in tarfile.REGULAR_TYPES:
            _skip(f, padded)  # directories, links, global pax headers: not sample members
            continue
        if with_data(name):
            data = _read_exact(f, padded)
            if len(data) < info.size:
                raise _CorruptTar(f"member {name!r} cut short ({len(data)} of {info.size} bytes)", member=name)
            yield name, info.size, data[: info.size]
        else:
            _skip(f, padded)
            yield name, info.size, None


def split_member(name: str) -> tuple[str, str]:
    """``"dir/000123.mp4"`` -> ``("dir/000123", "mp4")``; ``"a.seg.json"`` -> ``("a", "seg.json")``."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


# ---------------------------------------------------------------------------------------------- samples -> rows


def _row(shard: str, key: str, video_key: str, error: Optional[str] = None, detail: Optional[str] = None,
         **fields: Any) -> dict:
    row = {"key": key, "shard": shard, "video_key": video_key, "video_id": None, "start": None, "end": None,
           "caption": None, "truth": None, "error": error, "detail": redact(detail) if detail else None}
    row.update(fields)
    return row


def _seconds(value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"not a finite, non-negative number of seconds: {value!r}")
    return float(value)


def valid_unicode(text: str) -> bool:
    """False for text UTF-8 cannot encode: a lone surrogate (json's ``\ud800`` escapes), which Arrow refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked_truth(truth: dict) -> dict:
    """``truth`` if its fields have the types SynthKitchen writes (actions/verbs: lists of str, instructional: bool,
    spans: [start, end] number pairs, object: str); ValueError otherwise."""
    for field in ("actions", "verbs"):
        value = truth.get(field, [])
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise ValueError(f"synthkitchen.{field} is not a list of strings: {str(value)[:80]}")
    spans = truth.get("spans", [])
    if not isinstance(spans, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in p) for p in spans):
        raise ValueError(f"synthkitchen.spans is not a list of [start, end] pairs: {str(spans)[:80]}")
    if not isinstance(truth.get("instructional", True), bool):
        raise ValueError(f"synthkitchen.instructional is not a boolean: {truth['instructional']!r}")
    if not isinstance(truth.get("object", ""), (str, type(None))):
        raise ValueError(f"synthkitchen.object is not a string: {truth['object']!r}")
    return truth


def _segment_truth(truth: Optional[dict], segment: dict, start: Optional[float], end: Optional[float],
                   whole_video: bool) -> Optional[str]:
    """Ground truth of one clip as a json string: the segment's own ``synthkitchen`` when it has one; for a whole
    video, the top-level actions whose span midpoint lies in the window; for a pre-cut clip, the top level."""
    if isinstance(segment.get("synthkitchen"), dict):
        return json.dumps(_checked_truth(segment["synthkitchen"]))
    if not isinstance(truth, dict):
        return None
    _checked_truth(truth)
    if not whole_video:
        return json.dumps(truth)
    spans = truth.get("spans") or []
    actions = truth.get("actions") or []
    lo, hi = start or 0.0, end if end is not None else float("inf")
    keep = [i for i, span in enumerate(spans[: len(actions)]) if lo <= (span[0] + span[1]) / 2 < hi]
    picked = dict(truth)
    for field in ("actions", "verbs", "spans"):
        if isinstance(truth.get(field), list):
            picked[field] = [truth[field][i] for i in keep if i < len(truth[field])]
    return json.dumps(picked)


def sample_rows(shard: str, key: str, parts: dict[str, Any], with_video: bool) -> list[dict]:
    """Rows for one sample. ``parts`` maps extension -> bytes (or an int size when the member was skipped)."""
    video_ext = next((ext for ext in VIDEO_EXTS if ext in parts), None)
    extra = {"mp4": None} if with_video else {}
    if video_ext is None:
        return [_row(shard, key, key, "missing_mp4", "no video member", **extra)]
    video = parts[video_ext]
    if (len(video) if isinstance(video, (bytes, bytearray)) else int(video)) == 0:
        return [_row(shard, key, key, "empty_video", f"{key}.{video_ext} has zero bytes", **extra)]
    if "json" not in parts:
        return [_row(shard, key, key, "missing_json", "no json member", **extra)]
    try:
        meta = json.loads(parts["json"].decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"json is a {type(meta).__name__}, not an object")
        segments = meta.get("segments") or [{"start": meta.get("start"), "end": meta.get("end"),
                                             "text": meta.get("caption")}]
        if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
            raise ValueError("segments is not a list of objects")
        whole = len(segments) > 1
        windows = []
        for seg in segments:
            start, end = _seconds(seg.get("start")), _seconds(seg.get("end"))
            if not whole:  # a pre-cut clip's window is the json's start/end when present (contract)
                start = _seconds(meta["start"]) if meta.get("start") is not None else start
                end = _seconds(meta["end"]) if meta.get("end") is not None else end
            if start is not None and end is not None and end <= start:
                raise ValueError(f"empty window [{start}, {end})")
            windows.append((seg, start, end))
        # video2dataset keeps the input table's column name: videoID / videoid are the usual spellings
        source = next((meta[k] for k in ("video_id", "videoID", "videoid") if meta.get(k) not in (None, "")), key)
        video_id = str(source)
        if not valid_unicode(video_id):
            raise ValueError("video_id is not valid Unicode (a lone surrogate)")
        truths = [_segment_truth(meta.get("synthkitchen"), seg, start, end, whole) for seg, start, end in windows]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError) as err:
        return [_row(shard, key, key, "bad_json", f"{type(err).__name__}: {err}", **extra)]
    text = None
    if "txt" in parts:
        try:
            text = parts["txt"].decode("utf-8")
        except UnicodeDecodeError as err:
            return [_row(shard, key, key, "bad_caption", f"txt is not UTF-8: {err}", video_id=video_id, **extra)]
    rows = []
    for i, ((seg, start, end), truth) in enumerate(zip(windows, truths)):
        clip_key = f"{key}_{i:03d}" if whole else key
        caption = seg.get("text") if whole else (meta.get("caption") or seg.get("text") or text)
        if not isinstance(caption, str) or not caption.strip():
            problem = "empty caption"
        elif not valid_unicode(caption):
            problem = "caption is not valid Unicode (a lone surrogate)"
        else:
            problem = None
        if problem is not None:
            rows.append(_row(shard, clip_key, key, "bad_caption", problem, video_id=video_id,
                             start=start, end=end, **extra))
            continue
        row = _row(shard, clip_key, key, video_id=video_id, start=start, end=end, caption=caption.strip(),
                   truth=truth)
        if with_video:
            row["mp4"] = video  # one bytes object shared by all clips of a whole video
        rows.append(row)
    return rows


def duplicate_key(key: str, n: int) -> str:
    """Row key of the n-th (1-based) duplicate of ``key`` in a shard: ``key#duplicate``, ``key#duplicate2``, ..."""
    return f"{key}#duplicate" if n == 1 else f"{key}#duplicate{n}"


def iter_clips(shard_uri: str, s3: Optional[S3Config] = None, with_video: bool = False) -> Iterator[dict]:
    """Stream one shard, yielding one dict per clip (see the module docstring), never raising on bad input.

    Rows: ``key, shard (stem), video_key, video_id, start, end (seconds or None = whole clip), caption,
    truth (json str or None), error (None or reason), detail (redacted message or None)`` and, when
    ``with_video``, ``mp4`` (bytes). Without video the video members are skipped by seeking, not read.
    """
    shard = shard_stem(shard_uri)
    try:
        fs, path = open_filesystem(shard_uri, s3)
        f = fs.open(path, "rb")
    except Exception as err:
        detail = redact(f"cannot open {shard_uri}: {type(err).__name__}: {err}")
        log.warning(detail)
        yield _row(shard, f"{shard}#unreadable", None, "unreadable_shard", detail)
        return
    want = (lambda name: True) if with_video else (lambda name: split_member(name)[1] not in VIDEO_EXTS)
    seen: dict[str, int] = {}  # row key -> times seen
    key, parts = None, {}

    def flush():
        if key is None:
            return []
        if key in seen:  # the sample's key, or a whole video's clip key: the later sample is the duplicate
            seen[key] += 1
            return [_row(shard, duplicate_key(key, seen[key] - 1), key, "duplicate_key",
                         "key appears more than once in the shard")]
        try:
            rows = sample_rows(shard, key, parts, with_video)
        except Exception as err:  # a shape of bad input sample_rows does not foresee: this sample only
            rows = [_row(shard, key, key, "bad_sample", f"{type(err).__name__}: {err}",
                         **({"mp4": None} if with_video else {}))]
        clash = [r["key"] for r in rows if r["key"] in seen]
        if clash:
            seen[key] = seen.get(key, 0) + 1
            return [_row(shard, duplicate_key(key, seen[key]), key, "duplicate_key",
                         f"its clip keys {clash[:3]} were already used in the shard")]
        seen.update((r["key"], 1) for r in rows)
        seen.setdefault(key, 1)
        return rows

    try:
        with f:
            for name, size, data in _iter_members(f, want):
                member_key, ext = split_member(name)
                base = member_key.rsplit("/", 1)[-1]
                if not ext or base.startswith(".") or (base.startswith("__") and base.endswith("__")):
                    continue  # dotfiles and webdataset-style metadata (__index__.json) are not sample members
                if member_key != key or ext in parts:  # a repeated member: the same key again right after itself
                    yield from flush()
                    key, parts = member_key, {}
                parts[ext] = data if data is not None else size
            yield from flush()
    except Exception as err:  # _CorruptTar, or the stream itself failing mid-way (network, disk)
        broken = getattr(err, "member", None)
        if broken is not None and split_member(broken)[0] != key:
            yield from flush()  # the member that broke starts a new sample: the one before it is whole
            key = split_member(broken)[0]
        detail = redact(f"{shard_uri}: {type(err).__name__}: {err}")
        log.warning("corrupt shard %s", detail)
        yield _row(shard, f"{shard}#corrupt_tar", key, "corrupt_tar", detail)
