"""instraction/data/howto100m.py on bad input: each bad video or caption entry is skipped and counted under one
reason (never a crash of the whole conversion), each caption segment lands in exactly one count, and the counts
add up to what went in.

    python -m pytest -q tests/test_howto100m.py
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

import datagen
from instraction.data import howto100m, shards
from instraction.data.config import ConvertConfig, DataConfig


def _data(tmp_path, captions: dict, **convert) -> DataConfig:
    (tmp_path / "caption.json").write_text(json.dumps(captions))  # NaN / Infinity written as JSON allows them
    return DataConfig(shards=str(tmp_path / "shards"), make_synthetic=False, convert=ConvertConfig(
        captions=str(tmp_path / "caption.json"), videos=str(tmp_path / "videos"), **convert))


def _assert_counts_add_up(stats: dict, out) -> list[dict]:
    """Every video tried has exactly one status, in the returned stats and in the per-shard files alike."""
    assert sum(stats["status"].values()) == stats["videos"]
    rows = [r for i in range(stats["shards"]) for r in pq.read_table(out / f"{i:05d}.parquet").to_pylist()]
    assert len(rows) == stats["videos"] and Counter(r["status"] for r in rows) == Counter(stats["status"])
    per_shard = [json.loads((out / f"{i:05d}_stats.json").read_text()) for i in range(stats["shards"])]
    assert sum(s["successes"] for s in per_shard) == stats["written"] == stats["status"].get("success", 0)
    return rows


@pytest.fixture()
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("good1", "good2"):
        (folder / f"{name}.mp4").write_bytes(datagen.ramp_mp4(2.0))
    return folder


def test_unreadable_video_file_is_skipped_counted_and_logged(tmp_path, videos, caplog):
    (videos / "isdir.mp4").mkdir()  # listed as a video; reading it raises IsADirectoryError
    captions = {vid: {"start": [0.0], "end": [1.0], "text": ["stir"]} for vid in ("good1", "isdir", "good2")}
    with caplog.at_level(logging.WARNING, logger=howto100m.log.name):
        stats = howto100m.convert(_data(tmp_path, captions, samples_per_shard=2))
    assert stats["status"] == {"success": 2, "unreadable_video": 1} and stats["videos"] == 3
    assert any("isdir.mp4" in r.getMessage() and "IsADirectoryError" in r.getMessage() for r in caplog.records)
    rows = _assert_counts_add_up(stats, tmp_path / "shards")
    bad = next(r for r in rows if r["video_id"] == "isdir")
    assert bad["status"] == "unreadable_video" and "IsADirectoryError" in bad["error_message"]
    clips = [c for u in shards.list_shards(str(tmp_path / "shards")) for c in shards.iter_clips(u)]
    assert sorted(c["video_id"] for c in clips if c["error"] is None) == ["good1", "good2"]


def test_remote_read_error_of_any_type_is_skipped(tmp_path, videos, monkeypatch):
    """fsspec backends raise their own exception types (botocore, aiohttp), not only OSError."""

    class RemoteReadError(Exception):
        pass

    real_open = LocalFileSystem._open

    def flaky_open(self, path, mode="rb", **kwargs):
        if str(path).endswith("good1.mp4"):
            raise RemoteReadError("connection reset while reading good1.mp4")
        return real_open(self, path, mode, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", flaky_open)
    captions = {vid: {"start": [0.0], "end": [1.0], "text": ["stir"]} for vid in ("good1", "good2")}
    stats = howto100m.convert(_data(tmp_path, captions))
    assert stats["status"] == {"unreadable_video": 1, "success": 1}
    rows = _assert_counts_add_up(stats, tmp_path / "shards")
    assert "RemoteReadError" in next(r["error_message"] for r in rows if r["video_id"] == "good1")


@pytest.mark.parametrize("entry", [
    {"start": 0.0, "end": 1.0, "text": "stir"},  # scalars: len(float) raised TypeError
    {"start": [0.0], "end": [1.0], "text": "ab"},  # a string: zip took its characters as segments
    ["not", "a", "dict"],
])
def test_malformed_caption_entry_is_skipped_and_counted(tmp_path, videos, entry):
    with pytest.raises(ValueError):
        howto100m.clean_segments(entry, 2.0, Counter())
    captions = {"good1": entry, "good2": {"start": [0.0], "end": [1.0], "text": ["stir"]}}
    stats = howto100m.convert(_data(tmp_path, captions))
    assert stats["status"] == {"malformed_captions": 1, "success": 1}
    assert stats["segments"] == {"segments_written": 1}
    _assert_counts_add_up(stats, tmp_path / "shards")


def test_mismatched_lists_count_only_the_dropped_tail():
    counts = Counter()
    entry = {"start": [0.0, 1.0, 2.0], "end": [1.0, 2.0, 3.0, 4.0, 5.0], "text": ["a", "b", "c", "d", "e"]}
    kept = howto100m.clean_segments(entry, 10.0, counts)
    assert [s["text"] for s in kept] == ["a", "b", "c"]
    assert counts == {"segments_written": 3, "segments_mismatched_lists": 2}
    assert sum(counts.values()) == 5  # every input segment in exactly one bucket


def test_bad_timestamps_are_rejected_before_clipping():
    counts = Counter()
    nan, inf = math.nan, math.inf
    starts = [-3.0, 0.0, nan, 0.0, inf, 2.0, "x", True, 0.5, 1.0, 9.0]
    ends = [1.0, nan, 1.0, inf, inf, 1.0, 1.0, 2.0, 1.5, 1.5, 12.0]
    texts = ["neg", "nan end", "nan start", "inf end", "inf", "inverted", "text time", "bool", "ok", "", "late"]
    kept = howto100m.clean_segments({"start": starts, "end": ends, "text": texts}, 4.0, counts)
    assert kept == [{"start": 0.5, "end": 1.5, "text": "ok"}]
    assert counts == {"segments_bad_timestamps": 8, "segments_written": 1, "segments_empty_text": 1,
                      "segments_out_of_range": 1}
    assert sum(counts.values()) == len(starts)
    assert all(math.isfinite(s["start"]) and math.isfinite(s["end"]) and 0 <= s["start"] < s["end"] for s in kept)


def test_text_utf8_cannot_encode_is_counted_not_a_crash(tmp_path, videos):
    captions = {"good1": {"start": [0.0, 1.0], "end": [1.0, 2.0], "text": ["bad \ud800", "fine"]}}
    stats = howto100m.convert(_data(tmp_path, captions))
    assert stats["status"] == {"success": 1}
    assert stats["segments"] == {"segments_bad_text": 1, "segments_written": 1}


def test_conversion_counts_add_up_over_mixed_input(tmp_path, videos):
    (videos / "isdir.mp4").mkdir()
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "garbage.mp4").write_bytes(b"not a video at all" * 50)
    nan = math.nan
    captions = {
        "good1": {"start": [0.0, 1.0, -3.0], "end": [1.0, 9.0, 1.0, 2.0], "text": ["crack", "whisk", "neg", "x"]},
        "good2": {"start": [0.0, 0.5], "end": [nan, 1.5], "text": ["nan", "flip"]},
        "isdir": {"start": [0.0], "end": [1.0], "text": ["a"]},
        "empty": {"start": [0.0], "end": [1.0], "text": ["a"]},
        "garbage": {"start": [0.0], "end": [1.0], "text": ["a"]},
        "absent": {"start": [0.0], "end": [1.0], "text": ["a"]},
        "scalars": {"start": 0.0, "end": 1.0, "text": "a"},
    }
    (videos / "scalars.mp4").write_bytes(datagen.ramp_mp4(2.0))
    stats = howto100m.convert(_data(tmp_path, captions, samples_per_shard=3))
    assert stats["status"] == {"success": 2, "unreadable_video": 2, "empty_video": 1, "missing_video": 1,
                               "malformed_captions": 1}
    assert stats["missing"] == ["absent"] and stats["shards"] == 3
    # good1: lists of 3, 4, 4 -> 1 mismatched; "whisk" clipped to the 2 s video; -3.0 rejected. good2: NaN rejected.
    assert stats["segments"] == {"segments_mismatched_lists": 1, "segments_bad_timestamps": 2, "segments_written": 3}
    assert sum(stats["segments"].values()) == 4 + 2
    _assert_counts_add_up(stats, tmp_path / "shards")
    clips = [c for u in shards.list_shards(str(tmp_path / "shards")) for c in shards.iter_clips(u, with_video=True)]
    assert all(c["error"] is None for c in clips)
    assert {(c["video_id"], c["caption"]): (c["start"], c["end"]) for c in clips} == {
        ("good1", "crack"): (0.0, 1.0), ("good1", "whisk"): (1.0, 2.0), ("good2", "flip"): (0.5, 1.5)}
    assert all(c["mp4"] == datagen.ramp_mp4(2.0) for c in clips)  # bytes streamed into the tar unchanged
