"""Shard discovery and streaming: local dir / glob / s3 (a moto server on 127.0.0.1), whole-video expansion,
every kind of bad input counted with its reason, credentials never in a message.

    python -m pytest tests/test_shards.py -q
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from collections import defaultdict

import pyarrow as pa
import pytest

import datagen
from instraction import storage
from instraction.data import shards
from instraction.data.config import S3Config

SECRET = "sekrit-0123456789-do-not-log"


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    good = datagen.build_good_shards(str(root / "good"), num_shards=2, per_shard=3, whole_videos=1)
    bad = datagen.build_bad_shards(str(root / "bad"))
    return {"root": str(root), "good": good, "bad": bad}


@pytest.fixture(scope="module")
def s3_server(data_dirs):
    """A moto S3 server holding copies of the good and bad shard folders; credentials are set in this process's
    environment (the standard chain), never passed through config."""
    uploads = {p: f"bucket/{kind}/{os.path.basename(p)}" for kind in ("good", "bad") for p in data_dirs[kind]["shards"]}
    with datagen.MotoS3(uploads, secret=SECRET) as cfg:
        yield cfg


def read_all(spec, s3=None, with_video=False):
    return [row for uri in shards.list_shards(spec, s3) for row in shards.iter_clips(uri, s3, with_video)]


def by_reason(rows):
    out = defaultdict(list)
    for row in rows:
        out[row["error"]].append(row["key"])
    return {k: sorted(v) for k, v in out.items()}


def test_list_shards_dir_glob_file_and_missing(data_dirs, tmp_path):
    good = data_dirs["good"]["shards"]
    assert shards.list_shards(os.path.dirname(good[0])) == sorted(good)
    assert shards.list_shards(os.path.join(data_dirs["root"], "*", "0000[01].tar")) == sorted(good)
    assert shards.list_shards(good[1]) == [good[1]]
    assert shards.list_shards(str(tmp_path)) == []
    with pytest.raises(FileNotFoundError):
        shards.list_shards(str(tmp_path / "nowhere"))


def test_member_names_follow_webdataset_keys():
    assert shards.split_member("a/b/000123.mp4") == ("a/b/000123", "mp4")
    assert shards.split_member("000123.seg.JSON") == ("000123", "seg.json")


def test_good_shards_rows_and_whole_video_expansion(data_dirs):
    good = data_dirs["good"]
    rows = read_all(os.path.dirname(good["shards"][0]))
    assert all(r["error"] is None for r in rows)
    assert sorted(r["key"] for r in rows) == good["clip_keys"]
    (whole_key, segments), = good["whole"].items()
    clips = [r for r in rows if r["video_key"] == whole_key]
    assert [r["key"] for r in clips] == [f"{whole_key}_{i:03d}" for i in range(len(segments))]
    windows = [(r["start"], r["end"], r["caption"]) for r in clips]
    assert windows == [(s["start"], s["end"], s["text"]) for s in segments]
    assert {r["video_id"] for r in clips} == {"whole0"}
    precut = next(r for r in rows if r["key"] == "000000001")
    assert (precut["start"], precut["end"], precut["shard"]) == (0.0, 2.0, "00000")
    assert '"actions": ["chop onion", "stir sauce"]' in precut["truth"]
    assert "mp4" not in precut


def test_whole_video_truth_is_cut_to_the_window():
    truth = datagen.truth(["crack egg", "whisk egg", "pour batter"], spans=[[0.2, 1.8], [2.5, 3.5], [4.0, 5.5]])
    sample = datagen.whole_video_sample("w", "src", [{"start": 0.0, "end": 2.0, "text": "crack the egg"},
                                                     {"start": 2.0, "end": 6.0, "text": "whisk then pour"}], b"v")
    import json

    meta = json.loads(sample["json"])
    meta["synthkitchen"] = truth
    parts = {"mp4": b"v", "json": json.dumps(meta).encode(), "txt": sample["txt"]}
    rows = shards.sample_rows("00000", "w", parts, with_video=True)
    assert [json.loads(r["truth"])["actions"] for r in rows] == [["crack egg"], ["whisk egg", "pour batter"]]
    assert rows[0]["mp4"] is rows[1]["mp4"]  # the video bytes are shared, not copied per clip


@pytest.mark.parametrize("with_video", [False, True])
def test_every_bad_input_is_counted_with_its_reason(data_dirs, with_video):
    bad = data_dirs["bad"]
    rows = read_all(os.path.dirname(bad["shards"][0]), with_video=with_video)
    reasons = by_reason(rows)
    assert reasons.pop(None) == bad["good_keys"]
    assert reasons == bad["errors"]
    corrupt = {r["key"]: r for r in rows if r["error"] == "corrupt_tar"}
    assert corrupt["00011#corrupt_tar"]["video_key"] == "000110002"  # the sample being read when it broke
    assert "cut short" in corrupt["00011#corrupt_tar"]["detail"]
    if with_video:
        assert all(isinstance(r["mp4"], bytes) and r["mp4"] for r in rows if r["error"] is None)


def test_truncated_tar_yields_good_samples_then_one_corrupt_row(data_dirs):
    path = next(p for p in data_dirs["bad"]["shards"] if p.endswith("00011.tar"))
    rows = list(shards.iter_clips(path, with_video=True))
    assert [r["key"] for r in rows] == ["000110000", "000110001", "00011#corrupt_tar"]


def test_tar_cut_at_a_member_boundary_is_still_corrupt(data_dirs, tmp_path):
    src = data_dirs["good"]["shards"][1]
    raw = open(src, "rb").read()
    cut = tmp_path / "00001.tar"
    cut.write_bytes(raw[: datagen._offset_of_member(raw, "000010002.json")])  # no end-of-archive block
    rows = list(shards.iter_clips(str(cut)))
    assert [r["key"] for r in rows] == ["000010000", "00001#corrupt_tar"]
    assert rows[-1]["video_key"] == "000010001"


def test_unreadable_shard_is_one_row(tmp_path):
    rows = list(shards.iter_clips(str(tmp_path / "00042.tar")))
    assert [(r["key"], r["error"]) for r in rows] == [("00042#unreadable", "unreadable_shard")]


def test_duplicate_key_is_counted(tmp_path):
    mp4 = datagen.ramp_mp4()
    a = datagen.clip_sample("k1", "v", "stir the sauce", ["stir sauce"], mp4)
    b = datagen.clip_sample("k2", "v", "stir the sauce", ["stir sauce"], mp4)
    path = datagen.write_tar(str(tmp_path / "00000.tar"), [a, b, a])
    assert [(r["key"], r["error"]) for r in shards.iter_clips(path)] == [
        ("k1", None), ("k2", None), ("k1#duplicate", "duplicate_key")]


@pytest.mark.integration
def test_s3_and_disk_give_the_same_rows(data_dirs, s3_server):
    for kind in ("good", "bad"):
        disk = read_all(os.path.dirname(data_dirs[kind]["shards"][0]), with_video=True)
        remote = read_all(f"s3://bucket/{kind}", s3_server, with_video=True)
        strip = lambda rows: [{k: v for k, v in r.items() if k != "detail"} for r in rows]  # noqa: E731
        assert strip(remote) == strip(disk)
    assert shards.list_shards("s3://bucket/good/*.tar", s3_server) == [
        f"s3://bucket/good/{os.path.basename(p)}" for p in data_dirs["good"]["shards"]]


@pytest.mark.integration
def test_s3_endpoint_from_environment(data_dirs, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    assert len(shards.list_shards("s3://bucket/good", S3Config())) == len(data_dirs["good"]["shards"])


@pytest.mark.integration
def test_credentials_never_appear_in_errors_or_logs(s3_server, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(OSError) as err:
        shards.list_shards("s3://no-such-bucket/shards", s3_server)
    rows = list(shards.iter_clips("s3://bucket/good/99999.tar", s3_server))
    assert rows[0]["error"] == "unreadable_shard"
    # An endpoint carrying credentials in its URL (a common MinIO mistake) must not leak them either.
    leaky = S3Config(endpoint_url=f"http://AKIATESTKEY:{SECRET}@127.0.0.1:9/")
    rows += list(shards.iter_clips("s3://bucket/good/00000.tar", leaky))
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("instraction")]
    assert ours  # the failures were logged (botocore's own DEBUG lines are its business, not ours)
    texts = [str(err.value)] + ours + [r["detail"] for r in rows]
    assert rows[-1]["error"] == "unreadable_shard"
    assert all(SECRET not in t and "AKIATESTKEY" not in t for t in texts), texts


def test_redact_removes_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    text = (f"boom {SECRET} https://u:p@host/x?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA/2024 "
            "aws_secret_access_key = hunter2")
    clean = storage.redact(text)
    for leaked in (SECRET, "u:p@", "abcdef", "AKIA/2024", "hunter2"):
        assert leaked not in clean
    assert clean.startswith("boom ***")


def test_garbage_and_empty_files_are_corrupt_not_crashes(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    (tmp_path / "00001.tar").write_bytes(b"\0" * 100)
    reasons = [r["error"] for r in read_all(str(tmp_path))]
    assert reasons == ["corrupt_tar", "corrupt_tar"]
    shutil.rmtree(tmp_path)


def _edit_json(sample: dict, **changes) -> dict:
    meta = json.loads(sample["json"])
    meta.update(changes)
    return {**sample, "json": json.dumps(meta).encode()}


def test_every_duplicate_gets_its_own_row_and_whole_video_clips_cannot_shadow_a_sample(tmp_path):
    """Three copies of k1: two distinct duplicate rows; a real sample "w_000" and a whole video "w" whose first
    clip would also be "w_000": the later of the two is the duplicate (one row), nothing is joined twice."""
    mp4 = datagen.ramp_mp4()
    a = datagen.clip_sample("k1", "v", "stir the sauce", ["stir sauce"], mp4)
    clash = datagen.clip_sample("w_000", "v", "stir the sauce", ["stir sauce"], mp4)
    whole = datagen.whole_video_sample("w", "v2", [{"start": 0.0, "end": 1.0, "text": "crack the egg"},
                                                    {"start": 1.0, "end": 2.0, "text": "whisk the egg"}], mp4)
    path = datagen.write_tar(str(tmp_path / "00000.tar"), [a, a, a, clash, whole])
    rows = [(r["key"], r["error"]) for r in shards.iter_clips(path)]
    assert rows == [("k1", None), ("k1#duplicate", "duplicate_key"), ("k1#duplicate2", "duplicate_key"),
                    ("w_000", None), ("w#duplicate", "duplicate_key")]
    assert len({k for k, _ in rows}) == len(rows)


def test_bad_times_text_and_truth_are_counted_per_sample_and_the_shard_goes_on(tmp_path):
    mp4 = datagen.ramp_mp4()
    good = datagen.clip_sample("a", "v", "stir the sauce", ["stir sauce"], mp4)
    samples = {
        "nan_start": _edit_json(good, start=float("nan")),
        "neg_start": _edit_json(good, start=-3.0),
        "inf_end": _edit_json(good, end=float("inf")),
        "surrogate": {**good, "json": good["json"].replace(b'"caption": "stir the sauce"',
                                                           b'"caption": "stir \\ud800 sauce"')},
        "bad_truth_whole": datagen.whole_video_sample("x", "v", [
            {"start": 0.0, "end": 1.0, "text": "crack the egg"}, {"start": 1.0, "end": 2.0, "text": "whisk it"}], mp4),
        "_Xy12abcDEF": good,  # a YouTube id may start with "_"
        "z_last": good,
    }
    meta = json.loads(samples["bad_truth_whole"]["json"])
    meta["synthkitchen"] = {"actions": ["crack egg"], "spans": [[0, "x"]]}
    samples["bad_truth_whole"] = {**samples["bad_truth_whole"], "json": json.dumps(meta).encode()}
    path = datagen.write_tar(str(tmp_path / "00000.tar"),
                             [{**s, "__key__": k} for k, s in samples.items()])
    rows = {r["key"]: r for r in shards.iter_clips(path)}
    assert {k: r["error"] for k, r in rows.items()} == {
        "nan_start": "bad_json", "neg_start": "bad_json", "inf_end": "bad_json", "surrogate": "bad_caption",
        "bad_truth_whole": "bad_json", "_Xy12abcDEF": None, "z_last": None}
    assert "not valid Unicode" in rows["surrogate"]["detail"]
    pa.Table.from_pylist(list(rows.values()))  # every string is valid UTF-8 (a lone surrogate would raise here)


def test_member_names_that_are_not_utf8_become_valid_keys(tmp_path):
    mp4 = datagen.ramp_mp4()
    sample = datagen.clip_sample("k", "v", "stir the sauce", ["stir sauce"], mp4)
    path = tmp_path / "00000.tar"
    raw_key = b"caf\xe9".decode("utf-8", "surrogateescape")  # latin-1 bytes in a name
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for ext in ("mp4", "json", "txt"):
            info = tarfile.TarInfo(f"{raw_key}.{ext}")
            info.size = len(sample[ext])
            tar.addfile(info, io.BytesIO(sample[ext]))
    rows = list(shards.iter_clips(str(path)))
    assert [(r["key"], r["error"]) for r in rows] == [("caf\\xe9", None)]
    pa.Table.from_pylist(rows)


@pytest.mark.parametrize("bad", [{"actions": 5}, {"actions": "crack egg"}, {"instructional": "false"},
                                 {"spans": [[0, "x"]]}, {"verbs": [1]}])
def test_malformed_ground_truth_of_a_clip_is_bad_json(tmp_path, bad):
    mp4 = datagen.ramp_mp4()
    good = datagen.clip_sample("a", "v", "stir the sauce", ["stir sauce"], mp4)
    meta = json.loads(good["json"])
    meta["synthkitchen"].update(bad)
    path = datagen.write_tar(str(tmp_path / "00000.tar"), [{**good, "json": json.dumps(meta).encode()},
                                                           {**good, "__key__": "b"}])
    assert [(r["key"], r["error"]) for r in shards.iter_clips(path)] == [("a", "bad_json"), ("b", None)]


def test_video_id_is_read_under_video2datasets_spellings(tmp_path):
    """Clips of one source video must share its id (the bench holds whole source videos out of training)."""
    mp4 = datagen.ramp_mp4()
    good = datagen.clip_sample("a", "v", "stir the sauce", ["stir sauce"], mp4)
    meta = json.loads(good["json"])
    del meta["video_id"]
    samples = [{**good, "__key__": k, "json": json.dumps({**meta, **extra}).encode()}
               for k, extra in [("a", {"videoID": "yt1"}), ("b", {"videoid": "yt1"}), ("c", {})]]
    path = datagen.write_tar(str(tmp_path / "00000.tar"), samples)
    assert [r["video_id"] for r in shards.iter_clips(path)] == ["yt1", "yt1", "c"]
