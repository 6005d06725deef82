"""The Ray Data training pipeline on real shards and a local Ray: annotation join (table and ground-truth
fallback), split by source video, decode + tokenise, exact accounting of bad input, seek-cut windows of whole
videos, streaming_split over 2 workers, collate to the batch contract, data-wait timing, S3 == disk.

    python -m pytest tests/test_pipeline.py -q          # ~1 min on 2 cores (several small Ray Data runs)
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import datagen
from instraction.config import load_config
from instraction.curation.negatives import negatives_for
from instraction.data import examples, pipeline
from instraction.data.split import is_holdout

T, SIZE = 4, 32


def make_cfg(shards: str, annotations: str = "", *extra: str):
    annotations = annotations or "/nonexistent/annotations"  # no table: the ground truth stands in
    return load_config(None, [f"data.shards={shards}", f"data.annotations={annotations}", f"data.num_frames={T}",
                              f"data.size={SIZE}", "data.decode_batch_size=4", "data.max_negatives=3",
                              "bench.holdout_fraction=0.0", *extra])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    good_dir, mixed_dir = str(root / "good"), str(root / "mixed")
    good = datagen.build_good_shards(good_dir, num_shards=2, per_shard=4, whole_videos=1)
    # chatter clips (not instructional) in a third shard: the truth annotation drops them
    datagen.write_tar(os.path.join(good_dir, "00002.tar"), datagen.good_samples(2, 4, chatter_every=2))
    bad = datagen.build_bad_shards(mixed_dir)
    return {"root": str(root), "good_dir": good_dir, "good": good, "mixed_dir": mixed_dir, "bad": bad}


@pytest.fixture(scope="module")
def decoded(ray_local, dirs):
    """The good shards through the whole pipeline once, materialised for the tests that only inspect rows."""
    cfg = make_cfg(dirs["good_dir"], "")
    return cfg, pipeline.training_dataset(cfg, split="all", truth_negatives=negatives_for).dataset.materialize()


def consume(ds) -> dict[str, np.ndarray]:
    rows = ds.take_all()
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


@pytest.mark.integration
def test_truth_fallback_split_and_accounting(ray_local, dirs):
    cfg = make_cfg(dirs["good_dir"], os.path.join(dirs["root"], "no-annotations"), "bench.holdout_fraction=0.5")
    acc = pipeline.make_accounting()
    rows = {s: pipeline.annotated_clips(cfg, s, acc if s == "train" else None).take_all()
            for s in ("train", "bench", "all")}
    keys = {s: sorted(r["key"] for r in rows[s]) for s in rows}
    assert sorted(keys["train"] + keys["bench"]) == keys["all"] and not set(keys["train"]) & set(keys["bench"])
    assert all(is_holdout(r["video_id"], 0.5, cfg.bench.seed) for r in rows["bench"])
    assert keys["train"] and keys["bench"]
    chatter = ["000020001", "000020003"]
    assert set(keys["all"]) == set(dirs["good"]["clip_keys"] + ["000020000", "000020002"])
    first = next(r for r in rows["all"] if r["key"] == "000000000")
    assert list(first["actions"]) == ["crack egg", "whisk egg"]
    report = ray_local.get(acc.report.remote())
    assert report["clips_read"] == len(dirs["good"]["clip_keys"]) + 4
    assert report["excluded_by_split"] == len(keys["bench"]) + sum(
        is_holdout(f"vid2_{i}", 0.5, cfg.bench.seed) for i in (1, 3))
    train_chatter = [k for k, i in zip(chatter, (1, 3)) if not is_holdout(f"vid2_{i}", 0.5, cfg.bench.seed)]
    assert report["dropped"] == ({"dropped:not_instructional": len(train_chatter)} if train_chatter else {})


@pytest.mark.integration
def test_annotation_table_is_joined_shard_by_shard(ray_local, dirs, tmp_path):
    ann_dir = tmp_path / "annotations"
    ann_dir.mkdir()
    base = {"verb_altered": [], "order_swapped": [], "primary_object": "egg", "actions": ["beat egg"]}
    table = [
        {"key": "000000000", "decision": "kept", "reason": "", **base, "verb_altered": ["chop the egg"]},
        {"key": "000000001", "decision": "dropped", "reason": "chatter", **base},
        {"key": "000000002", "decision": "quarantined", "reason": "schema_error", **base},
        # 000000003 has no row: missing_annotation; the whole video's clips are all kept
        *[{"key": f"00000w000_{i:03d}", "decision": "kept", "reason": "", **base} for i in range(3)],
    ]
    pq.write_table(pa.Table.from_pylist(table), ann_dir / "00000.parquet")
    cfg = make_cfg(dirs["good_dir"], str(ann_dir))
    pipe = pipeline.training_dataset(cfg, split="all")
    out = consume(pipe.dataset)
    report = pipe.report()
    shard0 = sorted(k for k in out["key"] if k.startswith("00000"))
    assert shard0 == ["000000000", "00000w000_000", "00000w000_001", "00000w000_002"]
    assert report["dropped"] == {"dropped:chatter": 1, "quarantined:schema_error": 1, "missing_annotation": 1,
                                 "dropped:not_instructional": 2}  # shard 2 falls back to the ground truth
    assert report["dropped_keys"]["missing_annotation"] == ["000000003"]
    i = out["key"].index("000000000")
    assert out["neg_mask"][i].tolist() == [True, False, False] and out["verb_count"][i] == 1
    assert report["clips_read"] == report["delivered"] + report["dropped_total"] + report["excluded_by_split"]


@pytest.mark.integration
@pytest.mark.parametrize("materialize", ["false", "true"])  # decode actors / decode in the read task
def test_bad_input_counted_exactly_and_never_crashes(ray_local, dirs, materialize):
    bad = dirs["bad"]
    cfg = make_cfg(dirs["mixed_dir"], os.path.join(dirs["root"], "no-annotations"), "data.decode_concurrency=1",
                   f"data.materialize={materialize}")
    pipe = pipeline.training_dataset(cfg, split="all")
    keys = sorted(consume(pipe.dataset)["key"])
    assert keys == sorted(set(bad["good_keys"]) - set(bad["undecodable"]))
    report = pipe.report()
    expected = {reason: len(ks) for reason, ks in bad["errors"].items()}
    expected["undecodable_video"] = len(bad["undecodable"])
    assert report["dropped"] == expected
    assert report["dropped_keys"]["undecodable_video"] == bad["undecodable"]
    assert {r: report["dropped_keys"][r] for r in bad["errors"]} == bad["errors"]
    assert report["clips_read"] == report["delivered"] + report["dropped_total"] == len(keys) + sum(expected.values())
    assert "undecodable_video: 1" in pipeline.format_report(report)


@pytest.mark.integration
def test_decode_actor_killed_mid_epoch_is_restarted_and_every_clip_is_delivered_once(ray_local, dirs, tmp_path,
                                                                                      monkeypatch):
    """The one decode actor dies (os._exit, as on a lost node) on its second batch, after delivering one: Ray
    restarts it, the batch is retried, and the rows and the accounting are those of an undisturbed run."""
    marker = tmp_path / "crashed"

    class DiesOnce(pipeline.DecodeClips):  # defined here: pickled by value for the actor
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    monkeypatch.setattr(pipeline, "DecodeClips", DiesOnce)
    bad = dirs["bad"]
    cfg = make_cfg(dirs["mixed_dir"], os.path.join(dirs["root"], "no-annotations"), "data.decode_concurrency=1",
                   "data.decode_batch_size=1")
    pipe = pipeline.training_dataset(cfg, split="all")
    keys = consume(pipe.dataset)["key"]
    assert marker.exists()  # the actor did die
    assert sorted(keys) == sorted(set(bad["good_keys"]) - set(bad["undecodable"]))  # each once
    report = pipe.report()
    expected = {reason: len(ks) for reason, ks in bad["errors"].items()}
    expected["undecodable_video"] = len(bad["undecodable"])
    assert report["dropped"] == expected
    assert report["delivered"] == len(keys)
    assert report["clips_read"] == report["delivered"] + report["dropped_total"]


@pytest.mark.integration
def test_whole_video_windows_are_cut_by_seeking(dirs, decoded):
    out = consume(decoded[1])
    (whole_key, segments), = dirs["good"]["whole"].items()
    for i, seg in enumerate(segments):
        video = out["video"][out["key"].index(f"{whole_key}_{i:03d}")]
        assert video.shape == (T, SIZE, SIZE, 3) and video.dtype == np.uint8
        seconds = [datagen.level_to_seconds(float(f.mean())) for f in video]
        # every sampled frame comes from the segment's window (0.25 s of codec / level rounding slack)
        assert all(seg["start"] - 0.25 <= s < seg["end"] + 0.25 for s in seconds), (seg, seconds)
        assert seconds == sorted(seconds)


@pytest.mark.integration
def test_streaming_split_over_two_workers_covers_every_sample_once(ray_local, dirs):
    cfg = make_cfg(dirs["good_dir"], "")
    pipe = pipeline.training_dataset(cfg, split="train")
    its = pipe.dataset.streaming_split(2, equal=False)
    seen: list[list[str]] = [[], []]

    def work(rank):
        for batch in its[rank].iter_batches(batch_size=3, batch_format="numpy"):
            seen[rank].extend(batch["key"].tolist())

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    expected = sorted(set(dirs["good"]["clip_keys"]) | {"000020000", "000020002"})
    assert sorted(seen[0] + seen[1]) == expected
    assert not Counter(seen[0] + seen[1]) - Counter(expected)  # no sample twice


@pytest.mark.integration
def test_materialized_split_decodes_once_and_matches_the_stream(ray_local, dirs):
    from ray.data.dataset import MaterializedDataset

    cfg = make_cfg(dirs["good_dir"], "")
    streamed = pipeline.training_dataset(cfg, split="train").dataset
    cfg.data.materialize = True
    pipe = pipeline.training_dataset(cfg, split="train")
    assert isinstance(pipe.dataset, MaterializedDataset)  # decoded before any epoch starts
    # stored in input order whichever read or decode finishes first: the same blocks, so the same split per worker,
    # on every run (two 30-step runs of the default had bit-identical weights only with it; README, session 14)
    assert pipe.dataset.context.execution_options.preserve_order

    def rows(ds):
        return {b["key"]: (b["video"].tobytes(), b["neg_ids"].tobytes()) for b in ds.iter_rows()}

    first = rows(pipe.dataset)
    assert first == rows(streamed)  # same clips, frames and negatives
    assert rows(pipe.dataset) == first  # a second epoch re-reads the stored blocks
    assert pipe.report()["delivered"] == len(first)


@pytest.mark.integration
def test_collate_follows_the_batch_contract(decoded):
    cfg, ds = decoded
    d = cfg.data
    rows = ds.take(5)
    batch = examples.collate(rows, d)
    B, L, M, Lv, Nn = 5, d.max_text_len, d.max_verbs, d.max_verb_len, d.max_negatives
    shapes = {"video": (B, T, 3, SIZE, SIZE), "text_ids": (B, L), "text_mask": (B, L), "neg_ids": (B, Nn, L),
              "neg_mask": (B, Nn), "neg_token_mask": (B, Nn, L), "verb_ids": (B, M, Lv), "verb_mask": (B, M, Lv),
              "verb_count": (B,), "mam_ids": (B, L), "mam_labels": (B, L)}
    assert {k: tuple(batch[k].shape) for k in shapes} == shapes
    assert batch["video"].dtype == torch.float32 and batch["text_ids"].dtype == torch.long
    assert all(batch[k].dtype == torch.bool for k in ("text_mask", "neg_mask", "verb_mask", "neg_token_mask"))
    assert batch["verb_count"].dtype == torch.long and len(batch["key"]) == B
    raw = rows[0]["video"][0, 0, 0]  # uint8 RGB of frame 0, pixel (0, 0)
    expect = (torch.tensor(raw / 255.0, dtype=torch.float32) - torch.tensor(d.mean)) / torch.tensor(d.std)
    assert torch.allclose(batch["video"][0, 0, :, 0, 0], expect, atol=1e-5)
    # negatives: padding rows are all pad; verbs: count matches the real verb rows
    assert (batch["neg_ids"][~batch["neg_mask"]] == 0).all() and batch["neg_mask"].any()
    assert (batch["verb_mask"].any(-1).sum(-1) == batch["verb_count"]).all()
    # MAM: labels are -100 except at masked positions, which hold the original caption ids
    masked = batch["mam_labels"] != -100
    assert masked.any() and (batch["mam_ids"][masked] == 3).all()  # <mask> id of the word tokenizer
    assert (batch["mam_labels"][masked] == batch["text_ids"][masked]).all()


@pytest.mark.integration
def test_pipeline_reads_s3_like_disk(ray_local, dirs):
    uploads = {os.path.join(dirs["good_dir"], name): f"pipebucket/good/{name}" for name in os.listdir(dirs["good_dir"])}
    with datagen.MotoS3(uploads) as s3:
        disk = pipeline.annotated_clips(make_cfg(dirs["good_dir"], ""), "all").take_all()
        remote_cfg = make_cfg("s3://pipebucket/good", "", f"data.s3.endpoint_url={s3.endpoint_url}",
                              "data.s3.anon=true")
        remote = pipeline.annotated_clips(remote_cfg, "all").take_all()
    norm = lambda rows: sorted((tuple((k, str(v)) for k, v in sorted(r.items())) for r in rows))  # noqa: E731
    assert norm(remote) == norm(disk) and len(disk) == len(dirs["good"]["clip_keys"]) + 2


def test_accounting_is_idempotent_and_adds_up():
    acc = pipeline.Accounting(key_limit=2)
    summary = {"clips_read": 6, "excluded_by_split": 1, "to_decode": 3,
               "dropped": {"bad_json": 2}, "keys": {"bad_json": ["a", "b"]}}
    for _ in range(2):  # a retried task / a second epoch reports the same shard again
        acc.record_shard("s3://b/00000.tar", summary)
        acc.record_decode([("k1", "undecodable_video")])
    acc.record_shard("/other/00000.tar", {**summary, "keys": {"bad_json": ["c", "d"]}})  # same stem, other shard
    report = acc.report()
    assert report["clips_read"] == 12 and report["delivered"] == 5
    assert report["dropped"] == {"bad_json": 4, "undecodable_video": 1}
    assert report["dropped_keys"] == {"bad_json": ["a", "b"], "undecodable_video": ["k1"]}  # capped at 2
    assert report["clips_read"] == report["delivered"] + report["dropped_total"] + report["excluded_by_split"]


def test_pick_negatives_interleaves_kinds_up_to_the_limit():
    import random

    va, os_ = ["v1", "v2", "v3"], ["o1"]
    both = pipeline.pick_negatives(va, os_, "both", 3, random.Random(0))
    assert len(both) == 3 and "o1" in both[:2] and set(both) <= set(va + os_)
    assert pipeline.pick_negatives(va, os_, "order_swapped", 3, random.Random(0)) == ["o1"]
    assert pipeline.pick_negatives(va, os_, "none", 3, random.Random(0)) == []
    assert sorted(pipeline.pick_negatives(va, os_, "verb_altered", 5, random.Random(0))) == va


@pytest.mark.integration
def test_synthkitchen_shards_flow_through_with_every_clip_accounted(ray_local, tmp_path):
    from instraction.data import synthetic
    from instraction.data.config import SynthConfig

    synthetic.make_synthkitchen(str(tmp_path / "shards"), SynthConfig(num_shards=2, clips_per_shard=8,
                                                                       whole_video_fraction=0.3))
    cfg = make_cfg(str(tmp_path / "shards"), "", "bench.holdout_fraction=0.3")
    pipe = pipeline.training_dataset(cfg, split="train")
    keys = consume(pipe.dataset)["key"]
    report = pipe.report()
    assert len(keys) == report["delivered"] > 0 and len(set(keys)) == len(keys)
    assert any("_" in k for k in keys)  # clips cut from whole videos
    assert report["clips_read"] == report["delivered"] + report["dropped_total"] + report["excluded_by_split"]
    assert set(report["dropped"]) <= {"dropped:not_instructional"}


class _EndIsPad:
    """A word tokenizer whose end token is the pad id, as in HF CLIP (<|endoftext|> pads too): its mask cannot be
    recovered from ``ids != pad``."""

    def __init__(self):
        from instraction.data.tokenizer import WordTokenizer

        self.inner = WordTokenizer()
        self.pad_id = self.inner.pad_id

    def __call__(self, texts, max_len):
        ids, mask = self.inner(texts, max_len)
        ids = torch.where(ids == self.inner.eos_id, torch.full_like(ids, self.pad_id), ids)
        return ids, mask

    def mask_words(self, texts, words, max_len):
        return self.inner.mask_words(texts, words, max_len)


def test_negatives_keep_the_tokenizers_mask_when_the_end_token_is_the_pad_id():
    """Captions and hard negatives must end alike (the text tower pools at the last real token): the negatives'
    token mask is the tokenizer's, carried through the decode stage and the collate."""
    cfg = load_config(None, ["data.hard_negatives=both"])
    decode = pipeline.DecodeClips.__new__(pipeline.DecodeClips)
    decode.data, decode.seed, decode.accounting, decode.tokenizer = cfg.data, 0, None, _EndIsPad()
    clip = {"key": "k", "caption": "crack the egg then whisk the egg", "actions": ["crack egg", "whisk egg"],
            "verb_altered": ["stir the egg then whisk the egg"], "order_swapped": ["whisk the egg then crack the egg"]}
    rows = decode.tokenise([clip])
    L = cfg.data.max_text_len
    n_real = int(rows["neg_mask"][0].sum())
    assert n_real == 2
    for j in range(n_real):
        text = [clip["verb_altered"][0], clip["order_swapped"][0]]
        want = decode.tokenizer(text, L)[1].numpy()
        assert rows["neg_token_mask"][0, j].tolist() in [w.tolist() for w in want]
        assert rows["neg_token_mask"][0, j].sum() > (rows["neg_ids"][0, j] != 0).sum()  # the end token is kept
    rows["video"] = np.zeros((1, cfg.data.num_frames, 4, 4, 3), np.uint8)
    batch = examples.collate({k: v for k, v in rows.items()}, cfg.data)
    assert torch.equal(batch["neg_token_mask"][0, :n_real], torch.from_numpy(rows["neg_token_mask"][0, :n_real]))
    assert not batch["neg_token_mask"][0, n_real:].any()
    assert batch["text_mask"][0].sum() == (batch["text_ids"][0] != 0).sum() + 1  # the caption's end token, likewise


def test_a_failing_truth_negatives_function_is_counted_not_swallowed():
    """The pipeline gets the negatives function from its caller; one that raises quarantines the clip with a reason
    the accounting shows (quarantined:negatives_error) instead of training it without negatives."""
    clip = {"key": "k1", "caption": "crack the egg then whisk the egg",
            "truth": json.dumps({"actions": ["crack egg", "whisk egg"], "instructional": True, "object": "egg"})}

    def broken(caption, actions, key=""):
        raise RuntimeError("generator bug")

    ann = pipeline.truth_annotation(clip, broken)
    assert (ann["decision"], ann["reason"], ann["verb_altered"]) == ("quarantined", "negatives_error", [])
    ann = pipeline.truth_annotation(clip, negatives_for)
    assert ann["decision"] == "kept" and ann["verb_altered"] and ann["order_swapped"]
    assert pipeline.truth_annotation(clip)["verb_altered"] == []  # none passed: no negatives
