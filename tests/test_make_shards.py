"""jobs/make_shards.py: a HowTo100M-style caption.json + a folder of videos -> whole-video shards that the
reader expands into one clip per ASR segment; missing / unreadable videos and bad segments are counted.

    python -m pytest tests/test_make_shards.py -q
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import datagen
from instraction.data import shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
import make_shards  # noqa: E402


@pytest.fixture()
def howto(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = datagen.ramp_frames(4.0, 8)
    (videos / "vidA.mp4").write_bytes(datagen.encode_mp4(frames))
    (videos / "vidB.mkv").write_bytes(datagen.encode_mp4(frames, container_format="matroska"))
    (videos / "vidC.webm").write_bytes(os.urandom(3000))  # not a video
    (videos / "vidE.mp4").write_bytes(datagen.encode_mp4(frames))
    (videos / "notes.txt").write_text("not a video")
    captions = {
        "vidA": {"start": [0.0, 1.5], "end": [1.5, 3.0], "text": ["crack the egg", "whisk the egg"]},
        # second segment has no text, third runs past the 4 s video and is clipped, fourth starts after it
        "vidB": {"start": [0.0, 1.0, 2.0, 9.0], "end": [1.0, 2.0, 6.0, 12.0],
                 "text": ["chop the onion", "", "stir the sauce", "thanks for watching"]},
        "vidC": {"start": [0.0], "end": [1.0], "text": ["pour the milk"]},
        "vidD": {"start": [0.0], "end": [1.0], "text": ["missing video"]},
        "vidE": {"start": [0.5], "end": [2.5], "text": ["flip the pancake"]},
    }
    (tmp_path / "caption.json").write_text(json.dumps(captions))
    return tmp_path


def test_converts_counts_and_reads_back(howto, capsys):
    out = howto / "shards"
    rc = make_shards.main([f"data.convert.captions={howto / 'caption.json'}", f"data.convert.videos={howto / 'videos'}",
                           f"data.shards={out}", "data.convert.samples_per_shard=2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "vidD" in printed and '"missing_video": 1' in printed and '"unreadable_video": 1' in printed

    uris = shards.list_shards(str(out))
    assert [shards.shard_stem(u) for u in uris] == ["00000", "00001", "00002"]
    rows = [r for u in uris for r in shards.iter_clips(u, with_video=True)]
    assert all(r["error"] is None for r in rows)
    clips = {(r["video_id"], r["caption"]): (r["start"], r["end"]) for r in rows}
    assert clips == {
        ("vidA", "crack the egg"): (0.0, 1.5), ("vidA", "whisk the egg"): (1.5, 3.0),
        ("vidB", "chop the onion"): (0.0, 1.0), ("vidB", "stir the sauce"): (2.0, 4.0),
        ("vidE", "flip the pancake"): (0.5, 2.5),
    }
    assert [r["key"] for r in rows if r["video_id"] == "vidA"] == ["000000000_000", "000000000_001"]
    assert [r["key"] for r in rows if r["video_id"] == "vidE"] == ["000020000"]  # one segment: a pre-cut clip
    original = (howto / "videos" / "vidB.mkv").read_bytes()
    assert next(r["mp4"] for r in rows if r["video_id"] == "vidB") == original  # bytes copied, not re-encoded

    stats = [json.loads((out / f"{i:05d}_stats.json").read_text()) for i in range(3)]
    assert sum(s["count"] for s in stats) == 5 and sum(s["successes"] for s in stats) == 3
    table = pq.read_table(out / "00001.parquet").to_pylist()
    assert {r["video_id"]: r["status"] for r in table} == {"vidC": "unreadable_video", "vidD": "missing_video"}


def test_refuses_to_overwrite_existing_shards(howto):
    out = howto / "shards"
    args = [f"data.convert.captions={howto / 'caption.json'}", f"data.convert.videos={howto / 'videos'}",
            f"data.shards={out}", "data.convert.max_videos=1"]
    assert make_shards.main(args) == 0
    with pytest.raises(FileExistsError):
        make_shards.main(args)
    assert make_shards.main(args + ["data.convert.overwrite=true"]) == 0


@pytest.mark.integration
def test_converts_straight_to_s3(howto):
    with datagen.MotoS3({str(howto / "caption.json"): "convbucket/in/caption.json"}) as s3:
        args = ["data.convert.captions=s3://convbucket/in/caption.json", f"data.convert.videos={howto / 'videos'}",
                "data.shards=s3://convbucket/shards", f"data.s3.endpoint_url={s3.endpoint_url}"]
        assert make_shards.main(args) == 0
        uris = shards.list_shards("s3://convbucket/shards", s3)
        rows = [r for u in uris for r in shards.iter_clips(u, s3)]
    assert len(uris) == 1 and sorted({r["video_id"] for r in rows}) == ["vidA", "vidB", "vidE"]
    assert all(r["error"] is None for r in rows) and len(rows) == 5
