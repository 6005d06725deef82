"""SynthKitchen: layout, determinism, caching/atomicity, label statistics, captions and "motion, not objects".

    python -m pytest tests/test_synthetic.py -q        # ~20 s on one core
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import chi2_contingency

from instraction import lexicon
from instraction.data import render, synthetic
from instraction.data.config import SynthConfig
from instraction.data.synthetic import make_synthkitchen
from instraction.data.tokenizer import WordTokenizer
from instraction.data.video import decode_frames, sample_times

SMALL = SynthConfig(num_shards=2, clips_per_shard=24, whole_video_fraction=0.25, chatter_fraction=0.15, seed=1)


def read_tar(path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples[key][ext] = tar.extractfile(member).read()
    return dict(samples)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sk")
    return str(out), make_synthkitchen(out, SMALL)


def test_layout(small):
    out, paths = small
    assert paths == [os.path.join(out, f"{s:05d}.tar") for s in range(2)]
    assert sorted(os.listdir(out)) == sorted(
        [f"{s:05d}{ext}" for s in range(2) for ext in (".tar", ".parquet", "_stats.json")] + [synthetic.MARKER])
    whole_seen = 0
    for shard, path in enumerate(paths):
        samples = read_tar(path)
        assert sorted(samples) == [f"{shard:05d}{i:04d}" for i in range(24)]
        table = pq.read_table(path.replace(".tar", ".parquet")).to_pylist()
        assert [row["key"] for row in table] == sorted(samples)
        assert {"key", "status", "url", "video_id", "caption", "duration"} <= set(table[0])
        stats = json.loads(open(path.replace(".tar", "_stats.json")).read())
        assert stats["count"] == stats["successes"] == 24 and stats["config_hash"] == synthetic.config_hash(SMALL)
        for key, parts in samples.items():
            assert set(parts) == {"mp4", "json", "txt"}
            meta = json.loads(parts["json"])
            assert meta["key"] == key and parts["txt"].decode() == meta["caption"]
            segments, truth = meta["segments"], meta["synthkitchen"]
            assert 0.0 <= meta["start"] < meta["end"] <= meta["duration"] + 1e-9
            if len(segments) == 1:  # pre-cut clip: the window is the whole clip
                assert (meta["start"], meta["end"]) == (0.0, meta["duration"])
                assert segments[0]["text"] == meta["caption"]
                truths = [(segments[0], truth)]
            else:  # whole video: each segment carries its own truth inside its own window
                whole_seen += 1
                assert truth["whole_video"] and 2 <= len(segments) <= SMALL.max_segments
                truths = [(seg, seg["synthkitchen"]) for seg in segments]
                assert all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:]))
            for seg, t in truths:
                assert {"actions", "verbs", "object", "instructional", "spans"} <= set(t)
                assert t["actions"] == [f"{v} {t['object']}" for v in t["verbs"]]
                assert all(seg["start"] <= a < b <= seg["end"] for a, b in t["spans"])
                frames = decode_frames(parts["mp4"], SMALL.slots, SMALL.size, seg["start"], seg["end"])
                assert frames.shape == (SMALL.slots, SMALL.size, SMALL.size, 3)
    assert whole_seen > 0


def test_video_ids_group_clips(small):
    out, paths = small
    by_video = Counter(json.loads(p["json"])["video_id"] for path in paths for p in read_tar(path).values())
    shared = [n for vid, n in by_video.items() if "-v" in vid]
    assert max(shared) == SMALL.clips_per_video and sum(n > 1 for n in shared) >= len(shared) // 2
    assert all(n == 1 for vid, n in by_video.items() if "-w" in vid)  # a whole video is its own source video


def test_deterministic(small, tmp_path):
    out, paths = small
    again = make_synthkitchen(tmp_path / "again", SMALL)
    for a, b in zip(paths, again):
        assert open(a, "rb").read() == open(b, "rb").read()  # byte-identical tars (mp4, json, txt, headers)
    sample_a = read_tar(paths[0])["000000003"]
    sample_b = read_tar(again[0])["000000003"]
    assert np.array_equal(decode_frames(sample_a["mp4"], 8, 32), decode_frames(sample_b["mp4"], 8, 32))
    other = dataclasses.replace(SMALL, seed=2, num_shards=1)
    changed = read_tar(make_synthkitchen(tmp_path / "other", other)[0])
    assert changed["000000003"]["json"] != sample_a["json"]
    assert changed["000000003"]["txt"] != sample_a["txt"] or changed["000000003"]["mp4"] != sample_a["mp4"]


@pytest.mark.integration
def test_ray_tasks_render_the_same_bytes(small, tmp_path, ray_local):
    """use_ray=True (what the main job does once Ray is up) fans the shards out as Ray tasks on this node: the same
    bytes as rendering them in the driver, the same marker totals apart from timings, a log line per shard."""
    _, paths = small
    lines = []
    again = make_synthkitchen(tmp_path / "ray", SMALL, log=lines.append, use_ray=True)
    assert again == [str(tmp_path / "ray" / os.path.basename(p)) for p in paths]
    for a, b in zip(paths, again):
        assert open(a, "rb").read() == open(b, "rb").read()
    assert sorted(line.split()[2] for line in lines) == sorted(again)
    counts = {k: v for k, v in synthetic.read_marker(tmp_path / "ray")["totals"].items() if not k.endswith("_s")}
    want = {k: v for k, v in synthetic.read_marker(os.path.dirname(paths[0]))["totals"].items() if not k.endswith("_s")}
    assert counts == want and counts["count"] == SMALL.num_shards * SMALL.clips_per_shard


@pytest.mark.integration
def test_ray_task_failure_is_raised_and_finished_shards_kept(tmp_path, ray_local):
    """A shard whose task fails raises its own error in the driver (here its parquet path is taken by a directory),
    after the shards already running have finished; those stay complete, and the next run renders only the rest."""
    cfg = dataclasses.replace(SMALL, clips_per_shard=4, num_shards=2)
    out = tmp_path / "sk"
    out.mkdir()
    (out / "00001.parquet.partial").mkdir()
    finished = []
    with pytest.raises(OSError):
        for shard, stats in synthetic._render_with_ray(out, [0, 1], cfg):
            finished.append((shard, stats["count"]))
    assert finished == [(0, 4)] and (out / "00000_stats.json").exists() and not (out / "00001.tar").exists()
    (out / "00001.parquet.partial").rmdir()
    first = os.stat(out / "00000.tar").st_mtime_ns
    paths = make_synthkitchen(out, cfg, use_ray=True)
    assert [os.path.basename(p) for p in paths] == ["00000.tar", "00001.tar"]
    assert os.stat(out / "00000.tar").st_mtime_ns == first and synthetic.read_marker(out)["totals"]["count"] == 8


@pytest.mark.integration
def test_ray_node_without_cpus_renders_in_the_driver(tmp_path, ray_local, monkeypatch):
    """A node that gives Ray no CPU (a KubeRay head with num-cpus 0) would never run a task pinned to it: the shards
    are rendered in this process instead (seen here because a patched build_sample only exists in this process)."""
    node_id = ray_local.get_runtime_context().get_node_id()
    real_nodes, real_build = ray_local.nodes, synthetic.build_sample
    monkeypatch.setattr(ray_local, "nodes", lambda: [
        {**n, "Resources": {**n.get("Resources", {}), "CPU": 0.0}} if n.get("NodeID") == node_id else n
        for n in real_nodes()])
    calls = []
    monkeypatch.setattr(synthetic, "build_sample", lambda c, shard, index: calls.append(shard) or real_build(c, shard,
                                                                                                          index))
    cfg = dataclasses.replace(SMALL, clips_per_shard=3, num_shards=2)
    assert len(make_synthkitchen(tmp_path / "sk", cfg, use_ray=True)) == 2
    assert sorted(calls) == [0, 0, 0, 1, 1, 1]


@pytest.mark.integration
def test_ray_tasks_do_not_wait_behind_reserved_cpus(tmp_path, ray_local):
    """The render tasks reserve no Ray CPU (their own in-flight limit is the budget): with every CPU of the node held
    by an actor, as an earlier job's leftover might, the shards are still written instead of waiting forever."""
    free = ray_local.available_resources().get("CPU", 0)

    @ray_local.remote
    class Holder:
        def ready(self):
            return True

    holder = Holder.options(num_cpus=free).remote() if free else None
    try:
        if holder:
            ray_local.get(holder.ready.remote(), timeout=60)
        assert ray_local.available_resources().get("CPU", 0) == 0
        cfg = dataclasses.replace(SMALL, clips_per_shard=3, num_shards=2)
        assert len(make_synthkitchen(tmp_path / "sk", cfg, use_ray=True)) == 2
    finally:
        if holder:
            ray_local.kill(holder)


def test_cache_resume_and_atomic_shards(tmp_path, monkeypatch):
    cfg = dataclasses.replace(SMALL, clips_per_shard=6, num_shards=3)
    out = tmp_path / "sk"
    real = synthetic.build_sample

    def dies_in_shard_1(c, shard, index):
        if shard == 1 and index == 4:
            raise KeyboardInterrupt("killed")
        return real(c, shard, index)

    monkeypatch.setattr(synthetic, "build_sample", dies_in_shard_1)
    with pytest.raises(KeyboardInterrupt):
        make_synthkitchen(out, cfg)
    # shard 0 complete, shard 1 left nothing behind (no half tar under a shard name), no finished marker
    assert sorted(os.listdir(out)) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert synthetic.written_by_synthkitchen(out)  # ours, unfinished: the main job completes it (below)
    first = os.stat(out / "00000.tar").st_mtime_ns
    monkeypatch.setattr(synthetic, "build_sample", real)
    paths = make_synthkitchen(out, cfg)
    assert len(paths) == 3 and os.stat(out / "00000.tar").st_mtime_ns == first  # resumed, not re-rendered
    stamps = {p: os.stat(p).st_mtime_ns for p in paths}
    assert make_synthkitchen(out, cfg) == paths and {p: os.stat(p).st_mtime_ns for p in paths} == stamps  # cached
    smaller = dataclasses.replace(cfg, num_shards=2, seed=5)
    assert len(make_synthkitchen(out, smaller)) == 2
    assert not (out / "00002.tar").exists()  # stale shard of the old config removed
    assert synthetic.read_marker(out)["config_hash"] == synthetic.config_hash(smaller)
    forced = make_synthkitchen(out, smaller, force=True)
    assert os.stat(forced[0]).st_mtime_ns != stamps[paths[0]]


def test_refuses_shards_it_did_not_write(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "shard-a.tar").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        make_synthkitchen(tmp_path / "a", SMALL)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "00000.tar").write_bytes(b"x")  # video2dataset naming, but not ours
    with pytest.raises(FileExistsError):
        make_synthkitchen(tmp_path / "b", SMALL)
    assert not synthetic.written_by_synthkitchen(tmp_path / "b") and not synthetic.written_by_synthkitchen(tmp_path)
    with pytest.raises(ValueError):
        make_synthkitchen("s3://bucket/prefix", SMALL)


@pytest.fixture(scope="module")
def plans():
    """3,000 clips planned (poses + captions, no pixels): label statistics are cheap to check."""
    cfg = SynthConfig()
    return cfg, [synthetic._clip(cfg, np.random.default_rng([5, n])) for n in range(3000)]


def test_label_statistics(plans):
    cfg, clips = plans
    inst = [c for c in clips if c["instructional"]]
    assert abs(1 - len(inst) / len(clips) - cfg.chatter_fraction) < 0.03
    counts = Counter(len(c["verbs"]) for c in inst)
    assert set(counts) == {2, 3, 4}
    assert (counts[3] + counts[4]) / len(inst) >= 0.5  # plenty for InstrAct-Logic
    assert all(len(set(c["verbs"])) == len(c["verbs"]) for c in inst)  # distinct: a permutation is a new order
    verbs = sorted({v for c in inst for v in c["verbs"]})
    assert len(verbs) >= 12 and all(v in lexicon.VERBS for v in verbs)
    assert len({lexicon.VERBS[v] for v in verbs}) == len(verbs)  # one motion class each
    objects = sorted({c["object"] for c in clips})
    assert 5 <= len(objects) <= 8 and all(o in lexicon.OBJECTS for o in objects)
    # the object carries no verb information: verb x object counts are independent
    table = np.array([[sum(v == verb for c in inst if c["object"] == o for v in c["verbs"]) for verb in verbs]
                      for o in objects])
    assert (table > 0).all() and table.min() >= 10
    assert chi2_contingency(table)[1] > 1e-3


def test_every_action_is_seen_in_two_sampled_frames(plans):
    cfg, clips = plans
    starts = np.arange(cfg.slots * cfg.frames_per_slot)  # frame k shows [k, k+1) (in frames)
    duration = len(starts)
    for clip in clips:
        picked = np.floor(sample_times(0, duration, cfg.slots)).astype(int)
        assert len(clip["pose"]["cx"]) == duration
        for a, b in clip["spans"]:
            assert ((picked >= a) & (picked < b)).sum() >= cfg.min_action_slots


def test_captions_say_the_actions_in_order(plans):
    cfg, clips = plans
    tok = WordTokenizer()
    base = {lexicon.ing(v): v for v in lexicon.VERBS} | {v: v for v in lexicon.VERBS}
    for clip in clips:
        words = tok.split(clip["caption"])
        said = [base[w] for w in words if w in base]
        if clip["instructional"]:
            assert said == clip["verbs"], clip["caption"]
            assert clip["object"] in words and len(words) <= cfg.max_caption_words
        else:
            assert said == [], clip["caption"]


def _motion_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Translation-invariant motion: log-magnitude spectrum of the grey difference of two frames."""
    diff = b.mean(-1) - a.mean(-1)
    return np.log1p(np.abs(np.fft.fft2(diff))).ravel()


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, classes: int) -> float:
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train = np.arange(len(x)) < int(0.7 * len(x))
    centroids = np.stack([x[train & (y == c)].mean(0) for c in range(classes)])
    pred = np.argmin(((x[~train][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((pred == y[~train]).mean())


def test_motion_not_objects_tells_the_verb():
    """A single sampled frame barely predicts the verb (~chance 1/12); the change between two does."""
    cfg = SynthConfig(chatter_fraction=0.0)
    r = cfg.frames_per_slot
    single, motion, labels = [], [], []
    for n in range(400):
        rng = np.random.default_rng([11, n])
        clip = synthetic._clip(cfg, rng)
        frames = render.render(clip["object"], clip["pose"], render.background(cfg.size, rng)).astype(np.float32)
        for verb, (a, b) in zip(clip["verbs"], clip["spans"]):
            first, second = frames[a + r // 2], frames[a + r // 2 + r]  # the action's first two sampled frames
            single.append(first.reshape(8, 4, 8, 4, 3).mean((1, 3)).ravel())  # the frame, 8x8 colour
            motion.append(_motion_features(first, second))
            labels.append(cfg.verbs.index(verb))
    y = np.array(labels)
    static_acc = _nearest_centroid_accuracy(np.stack(single), y, len(cfg.verbs))
    motion_acc = _nearest_centroid_accuracy(np.stack(motion), y, len(cfg.verbs))
    print(f"nearest centroid, 12 verbs: single frame {static_acc:.3f}, frame difference {motion_acc:.3f}")
    assert static_acc < 0.2
    assert motion_acc > static_acc + 0.3


def test_main_job_completes_an_interrupted_render_and_uses_foreign_shards_as_they_are(tmp_path, monkeypatch):
    """prepare_data took any shards without a finished marker for someone else's and trained on the 1 of 3."""
    from instraction.config import load_config
    from instraction.workflow import Stages, prepare_data

    small = dataclasses.replace(SMALL, clips_per_shard=6, num_shards=3)
    out = tmp_path / "sk"
    real = synthetic.build_sample

    def dies_in_shard_1(c, shard, index):
        if shard == 1:
            raise KeyboardInterrupt("killed")
        return real(c, shard, index)

    monkeypatch.setattr(synthetic, "build_sample", dies_in_shard_1)
    with pytest.raises(KeyboardInterrupt):
        make_synthkitchen(out, small)
    monkeypatch.setattr(synthetic, "build_sample", real)
    cfg = load_config(None, [f"data.shards={out}", "data.make_synthetic=true"])
    cfg.data.synthetic = small
    prepare_data(cfg, Stages(lambda line: None))
    assert sorted(p for p in os.listdir(out) if p.endswith(".tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert synthetic.read_marker(out)["config_hash"] == synthetic.config_hash(small)
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "00000.tar").write_bytes((out / "00000.tar").read_bytes())
    cfg.data.shards = str(foreign)
    prepare_data(cfg, Stages(lambda line: None))
    assert sorted(os.listdir(foreign)) == ["00000.tar"]  # used as it is: nothing rendered beside it


def test_unseen_pairs_are_a_spread_fifth_of_all_pairs():
    cfg = SynthConfig()
    pairs = synthetic.unseen_pairs(cfg)
    assert len(pairs) == round(0.2 * len(cfg.verbs) * len(cfg.objects))
    assert pairs == synthetic.unseen_pairs(SynthConfig()) and pairs != synthetic.unseen_pairs(SynthConfig(seed=3))
    for obj in cfg.objects:  # every object keeps enough seen verbs for a clip's distinct verbs
        assert len([v for v in cfg.verbs if (v, obj) not in pairs]) >= cfg.max_actions
    for verb in cfg.verbs:  # every verb is still seen with most objects
        assert len([o for o in cfg.objects if (verb, o) not in pairs]) >= len(cfg.objects) - 2
    assert synthetic.unseen_pairs(SynthConfig(unseen_pairs=0.0)) == frozenset()


def test_unseen_pairs_appear_only_in_bench_split_videos(tmp_path):
    """Built by the real sample builder: no training-split clip shows an unseen pair, and
    the bench split shows many, in pre-cut clips and whole videos alike."""
    cfg = SynthConfig(num_shards=4, clips_per_shard=64, whole_video_fraction=0.2, holdout_fraction=0.3, seed=2)
    pairs = synthetic.unseen_pairs(cfg)
    seen_in = {"train": Counter(), "bench": Counter()}
    for shard in range(cfg.num_shards):
        for index in range(cfg.clips_per_shard):
            sample, row = synthetic.build_sample(cfg, shard, index)
            meta = json.loads(sample["json"])
            split = "bench" if synthetic.in_bench_split(cfg, meta["video_id"]) else "train"
            truths = [s["synthkitchen"] for s in meta["segments"]] if len(meta["segments"]) > 1 else [meta["synthkitchen"]]
            for t in truths:
                for v in t["verbs"]:
                    seen_in[split][(v, t["object"]) in pairs] += 1
    assert seen_in["train"][True] == 0 and seen_in["train"][False] > 300
    assert seen_in["bench"][True] >= 0.1 * sum(seen_in["bench"].values()) > 10


def test_marker_lists_the_unseen_pairs(small):
    out, _ = small
    marker = synthetic.read_marker(out)
    assert marker["unseen_pairs"] == sorted(f"{v} {o}" for v, o in synthetic.unseen_pairs(SMALL))
