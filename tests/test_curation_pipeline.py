"""Curation end to end on Ray Data with the rules backend: SynthKitchen against its ground truth, bad and
unreadable shards, exactly one row per clip read, re-run skipping, S3 output (moto) and jobs/curate.py.

    python -m pytest tests/test_curation_pipeline.py -q
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import datagen
from instraction import storage
from instraction.config import load_config
from instraction.curation import pipeline
from instraction.curation.backends.rules import RulesBackend
from instraction.data import shards
from instraction.data.config import SynthConfig
from instraction.data.synthetic import make_synthkitchen

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthkitchen(root / "shards", SynthConfig(num_shards=2, clips_per_shard=20, whole_video_fraction=0.2))
    return str(root / "shards")


def config(shards_spec, annotations, *overrides):
    return load_config(None, [f"data.shards={shards_spec}", f"data.annotations={annotations}", *overrides])


def read_table(root):
    import pyarrow as pa

    files = sorted(p for p in os.listdir(root) if p.endswith(".parquet"))
    return pa.concat_tables([pq.read_table(os.path.join(root, f)) for f in files]), files


def test_rules_on_synthkitchen_matches_ground_truth_and_resumes(ray_local, synth, tmp_path):
    ann = str(tmp_path / "ann")
    summary = pipeline.curate(config(synth, ann), progress=False)
    clips = {r["key"]: r for uri in shards.list_shards(synth) for r in shards.iter_clips(uri)}
    table, files = read_table(ann)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert files == ["00000.parquet", "00001.parquet"]
    assert sorted(rows) == sorted(clips) and table.num_rows == len(clips)  # exactly one row per clip read
    assert summary["counts"]["rows"] == len(clips) == sum(summary["counts"]["by_decision"].values())
    assert json.loads(Path(ann, "summary.json").read_text())["counts"] == summary["counts"]

    truth = {k: json.loads(c["truth"]) for k, c in clips.items()}
    filter_ok = sum((rows[k]["decision"] == "kept") == t["instructional"] for k, t in truth.items())
    instructional = [k for k, t in truth.items() if t["instructional"]]
    exact = sum(rows[k]["actions"] == truth[k]["actions"] for k in instructional)
    assert filter_ok / len(truth) >= 0.95 and exact / len(instructional) >= 0.95
    kept = [r for r in rows.values() if r["decision"] == "kept"]
    assert all(len(r["verb_altered"]) == 9 and r["order_swapped"] for r in kept)
    assert all(r["primary_object"] == truth[r["key"]]["object"] for r in kept)
    assert {(r["backend"], r["model"], r["prompt_version"]) for r in rows.values()} == {("rules", "rules-v1", "v1")}

    mtimes = {f: os.path.getmtime(os.path.join(ann, f)) for f in files}
    again = pipeline.curate(config(synth, ann), progress=False)
    assert (again["shards_skipped"], again["shards_curated"], again["counts"]["rows"]) == (2, 0, 0)
    assert again["table"] == summary["counts"]  # the whole table's totals, from the files' footers
    assert {f: os.path.getmtime(os.path.join(ann, f)) for f in files} == mtimes
    forced = pipeline.curate(config(synth, ann, "curation.force=true"), progress=False)
    assert forced["shards_curated"] == 2 and forced["counts"] == summary["counts"]
    # a file written by another prompt version (or model) is stale: that shard is curated again
    path = os.path.join(ann, "00001.parquet")
    stale = pq.read_table(path)
    state = json.loads(stale.schema.metadata[pipeline.META_KEY])
    fs, _ = storage.open_filesystem(ann)
    pipeline.write_table(fs, path, stale, {**state, "model": "older"}, local=True)
    third = pipeline.curate(config(synth, ann), progress=False)
    assert (third["shards_curated"], third["shards_skipped"]) == (1, 1)
    # a shard rewritten under the same name (new bytes, e.g. re-rendered data) is curated again
    shard0 = sorted(p for p in os.listdir(synth) if p.endswith(".tar"))[0]
    stat = os.stat(os.path.join(synth, shard0))
    os.utime(os.path.join(synth, shard0), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fourth = pipeline.curate(config(synth, ann), progress=False)
    assert (fourth["shards_curated"], fourth["shards_skipped"]) == (1, 1)


def test_bad_and_unreadable_shards_are_counted_not_lost(ray_local, tmp_path):
    bad = datagen.build_bad_shards(str(tmp_path / "shards"))
    os.symlink(str(tmp_path / "nowhere.tar"), str(tmp_path / "shards" / "00099.tar"))  # listed, cannot be opened
    datagen.write_tar(str(tmp_path / "shards" / "00098.tar"), [])  # a well-formed tar with no sample
    ann = str(tmp_path / "ann")
    summary = pipeline.curate(config(str(tmp_path / "shards"), ann), progress=False)
    table, files = read_table(ann)
    assert "00099.parquet" not in files and "00098.parquet" not in files and len(files) == len(bad["shards"])
    assert [u["shard"] for u in summary["unreadable_shards"]] == [str(tmp_path / "shards" / f"0009{i}.tar")
                                                                  for i in (8, 9)]
    assert "no clip was read" in summary["unreadable_shards"][0]["detail"]
    rows = table.to_pylist()
    reasons = {}
    for r in rows:
        if r["decision"] == "quarantined":
            reasons.setdefault(r["reason"], []).append(r["key"])
    assert {k: sorted(v) for k, v in reasons.items()} == bad["errors"]
    assert sorted(r["key"] for r in rows if r["decision"] != "quarantined") == bad["good_keys"]
    assert summary["counts"]["rows"] == table.num_rows
    assert summary["counts"]["by_reason"]["quarantined"] == {k: len(v) for k, v in bad["errors"].items()}
    # the unreadable shard has no file, so the next run tries it again (and skips the others)
    again = pipeline.curate(config(str(tmp_path / "shards"), ann), progress=False)
    assert again["shards_skipped"] == len(bad["shards"]) and len(again["unreadable_shards"]) == 2


class LosingBackend(RulesBackend):
    """A backend that loses rows (as a failed block would): the pipeline must still give each clip a row."""

    def annotate(self, rows):
        import pyarrow.compute as pc

        def lose(batch):
            return batch.filter(pc.invert(pc.ends_with(batch["key"], "1")))

        return super().annotate(rows).map_batches(lose, batch_format="pyarrow")


def test_rows_lost_in_the_backend_are_quarantined(ray_local, tmp_path, monkeypatch):
    good = datagen.build_good_shards(str(tmp_path / "shards"), num_shards=1, per_shard=4, whole_videos=1)
    monkeypatch.setattr(pipeline, "make_backend", LosingBackend)
    summary = pipeline.curate(config(str(tmp_path / "shards"), str(tmp_path / "ann")), progress=False)
    rows = pq.read_table(str(tmp_path / "ann" / "00000.parquet")).to_pylist()
    assert sorted(r["key"] for r in rows) == good["clip_keys"]
    lost = sorted(r["key"] for r in rows if r["reason"] == "lost_in_backend")
    assert lost == [k for k in good["clip_keys"] if k.endswith("1")] and lost
    assert summary["counts"]["by_reason"]["quarantined"] == {"lost_in_backend": len(lost)}


def test_annotations_on_s3(ray_local, tmp_path):
    datagen.build_good_shards(str(tmp_path / "shards"), num_shards=2, per_shard=3, whole_videos=0)
    with datagen.MotoS3({}, secret="curation-secret") as s3:
        fs, _ = storage.open_filesystem("s3://x", s3)
        fs.mkdir("annotations-bucket")
        cfg = config(str(tmp_path / "shards"), "s3://annotations-bucket/ann", f"data.s3.endpoint_url={s3.endpoint_url}")
        summary = pipeline.curate(cfg, progress=False)
        assert summary["counts"]["rows"] == 6 and summary["shards_curated"] == 2
        assert sorted(fs.ls("annotations-bucket/ann", detail=False)) == [
            "annotations-bucket/ann/00000.parquet", "annotations-bucket/ann/00001.parquet",
            "annotations-bucket/ann/summary.json"]
        with fs.open("annotations-bucket/ann/00001.parquet", "rb") as f:
            assert pq.read_table(f).num_rows == 3
        assert pipeline.curate(cfg, progress=False)["shards_skipped"] == 2


def test_curate_job_main(ray_local, synth, tmp_path, capsys):
    import curate as curate_job

    ann = str(tmp_path / "ann")
    # make_synthetic=false: these shards were rendered with a small config, which the embedded default would redo
    assert curate_job.main([f"data.shards={synth}", f"data.annotations={ann}", "data.make_synthetic=false"]) == 0
    out = capsys.readouterr().out
    assert "kept" in out and "instructional" in out and "total" in out
    assert sorted(os.listdir(ann)) == ["00000.parquet", "00001.parquet", "summary.json"]
    assert curate_job.main([f"data.shards={synth}", f"data.annotations={ann}", "data.make_synthetic=false",
                            "curation.backend=openai",
                            "curation.base_url=http://127.0.0.1:9/v1"]) == 1  # nothing listens: fails fast
    (tmp_path / "empty").mkdir()
    assert curate_job.main([f"data.shards={tmp_path / 'empty'}", f"data.annotations={tmp_path / 'ann2'}",
                            "data.make_synthetic=false"]) == 1  # a wrong path is an error, not zero clips
    assert "no shard" in capsys.readouterr().err and not (tmp_path / "ann2").exists()
