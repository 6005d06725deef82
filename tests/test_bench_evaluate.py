"""InstrAct Bench evaluation: temporal controls, scoring, tables, plots, the evaluate job and the ablation configs.

    python -m pytest tests/test_bench_evaluate.py -x -q

The bench is real but tiny: 14 PyAV-encoded H.264 clips (each a colour tint whose brightness RISES over time, so
frame order is visible) in two webdataset shards, a hand-made annotation table, and build.build() on top. Planted
failures: one clip with garbage bytes (undecodable), one key absent from its shard, one in a shard that does not
exist. Toy scorers make the temporal controls checkable exactly; a tiny random InstrActionModel runs the job end to
end (results.json, tables.md, PNGs, an MLflow run in a SQLite store under tmp_path).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import datagen
from instraction.bench import build as bench_build
from instraction.bench.alignment import dtw_path, normalized_dtw_cost
from instraction.bench.evaluate import (CONTROLS, BackboneScorer, control_indices, evaluate, load_bench_videos,
                                        pool_size_curve)
from instraction.bench.metrics import mcq_metrics
from instraction.bench.plots import write_plots
from instraction.bench.report import compare_table, dumps, flatten_metrics, tables_markdown
from instraction.config import ConfigError, load_config, to_yaml
from instraction.tracking import metric_name

ROOT = Path(__file__).resolve().parents[1]
T, SIZE = 4, 16
TINY = ["model.video.width=16", "model.video.layers=2", "model.video.image_size=16", "model.video.num_frames=4",
        "model.text.width=16", "model.text.layers=1", "model.embed_dim=16", "model.perceiver.num_latents=4",
        f"data.num_frames={T}", f"data.size={SIZE}", "bench.holdout_fraction=1.0", "bench.semantic_candidates=4",
        "bench.dynamics_min_pool=3", "bench.batch_size=5"]
VERBS = ["crack", "whisk", "pour", "stir", "flip", "chop", "roll", "press"]


def _ramp_clip(i: int) -> bytes:
    """2 s at 8 fps, 32x32: a per-clip tint whose brightness rises with time."""
    tint = np.array([0.6 + 0.4 * ((i * 37) % 7) / 6, 0.6 + 0.4 * ((i * 53) % 5) / 4, 0.6 + 0.4 * (i % 3) / 2])
    levels = 40 + 12 * np.arange(16)
    frames = np.clip(levels[:, None, None, None] * tint[None, None, None, :], 0, 255).astype(np.uint8)
    return datagen.encode_mp4(np.broadcast_to(frames, (16, 32, 32, 3)).copy(), fps=8)


def _annotation(i: int, key: str, shard: str) -> dict:
    verbs = [VERBS[(i + k * 3) % len(VERBS)] for k in range(3)]
    obj = "egg" if i % 2 == 0 else "pan"  # "Tools & appliances": a category name MLflow must not choke on
    phrases = [f"{v} the {obj}" for v in verbs]
    caption = " then ".join(phrases)
    altered = [" then ".join([f"{w} the {obj}", *phrases[1:]]) for w in VERBS if w != verbs[0]][:4]
    swapped = [" then ".join(p) for p in ([phrases[1], phrases[0], phrases[2]], [phrases[2], phrases[1], phrases[0]],
                                         [phrases[0], phrases[2], phrases[1]])]
    return dict(key=key, shard=shard, video_key=key, video_id=f"vid_{key}", start=0.0, end=2.0, caption=caption,
                decision="kept", reason="", actions=[f"{v} {obj}" for v in verbs], verb_altered=altered,
                order_swapped=swapped, primary_object=obj)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny models are dispatch-bound: extra OpenMP threads only fight the shared cores (100x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_eval")
    rows, samples = [], {"00000": [], "00001": []}
    for i in range(14):
        shard = "00000" if i < 7 else "00001"
        key = f"clip{i:02d}"
        rows.append(_annotation(i, key, shard))
        samples[shard].append(datagen.clip_sample(key, f"vid_{key}", rows[-1]["caption"], rows[-1]["actions"],
                                                  _ramp_clip(i)))
    rows.append(_annotation(14, "garbage", "00000"))
    samples["00000"].append(datagen.clip_sample("garbage", "vid_garbage", rows[-1]["caption"], rows[-1]["actions"],
                                                os.urandom(2048)))
    rows.append(_annotation(15, "ghost", "00000"))  # annotated, but not in the shard
    rows.append(_annotation(16, "lost", "00099"))  # its shard does not exist
    for shard, items in samples.items():
        datagen.write_tar(str(root / "shards" / f"{shard}.tar"), items)
    cfg = load_config(None, [*TINY, f"data.shards={root / 'shards'}", f"data.annotations={root / 'annotations'}",
                             f"bench.out={root / 'bench'}", f"run.dir={root / 'runs'}"])
    tables = bench_build.build(pd.DataFrame(rows), cfg.bench)
    bench_build.write(tables, cfg.bench.out)
    tables = bench_build.load(cfg.bench.out)  # as the job sees it: after a Parquet round trip
    videos = load_bench_videos(cfg, tables)
    return {"root": root, "cfg": cfg, "tables": tables, "videos": videos}


# ------------------------------------------------------------------------------------------------- toy scorers


def _text_hash(texts, dim=8):
    out = torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                       for t in texts])
    return F.normalize(out, dim=-1)


class TimeBlindScorer:
    """Per-channel frame statistics, sorted along time first: exactly invariant to frame order."""

    def __init__(self):
        self.proj = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))

    def encode_video(self, video):
        stats = video.mean(dim=(3, 4)).sort(dim=1).values  # [B,T,3], order-free
        feats = torch.cat([stats.mean(1), stats.std(1)], dim=-1)
        return feats @ self.proj

    def encode_text(self, texts):
        return _text_hash(texts)


class TimeSensitiveScorer:
    """Video: [brightness slope over time, 0]; text: [+1, 0] for the true captions, [-1, 0] otherwise. Perfect when
    time runs forward, worst when reversed, tied (worst) when static."""

    def __init__(self, truths):
        self.truths = set(truths)

    def encode_video(self, video):
        m = video.mean(dim=(2, 3, 4))  # [B,T]
        t = torch.arange(m.shape[1], dtype=m.dtype) - (m.shape[1] - 1) / 2
        slope = ((m - m.mean(1, keepdim=True)) * t).sum(1)
        return torch.stack([slope, torch.zeros_like(slope)], dim=-1)

    def encode_text(self, texts):
        return torch.tensor([[1.0 if x in self.truths else -1.0, 0.0] for x in texts])


class RecordingScorer(TimeBlindScorer):
    def __init__(self):
        super().__init__()
        self.seen = []

    def encode_video(self, video):
        self.seen.append(video.clone())
        return super().encode_video(video)


def _truths(tables):
    return [row.candidates[row.answer] for frame in (tables.semantic, tables.logic) for row in frame.itertuples()]


# ------------------------------------------------------------------------------------------------------- tests


def test_control_indices():
    assert control_indices("reversed", 5, "k", 0).tolist() == [4, 3, 2, 1, 0]
    for key in ("a", "b", "c", "d", "e"):
        perm = control_indices("shuffled", 4, key, 0)
        assert sorted(perm.tolist()) == [0, 1, 2, 3] and perm.tolist() != [0, 1, 2, 3]
        assert (control_indices("shuffled", 4, key, 0) == perm).all()  # fixed per clip and seed
        static = control_indices("static", 4, key, 0)
        assert len(set(static.tolist())) == 1 and 0 <= static[0] < 4
    assert control_indices("shuffled", 2, "x", 3).tolist() == [1, 0]
    assert control_indices("shuffled", 1, "x", 3).tolist() == [0]
    perms = {tuple(control_indices("shuffled", 8, f"k{i}", 0)) for i in range(20)}
    assert len(perms) > 10  # per clip, not one global permutation
    with pytest.raises(ValueError, match="unknown temporal control"):
        control_indices("blurred", 4, "k", 0)


def test_videos_load_and_failures_are_counted(bench_env):
    videos = bench_env["videos"]
    assert len(videos) == 14
    frames = videos["clip03"]
    assert frames.shape == (T, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert np.all(np.diff(frames.reshape(T, -1).mean(1)) > 0)  # brightness rises: time order survived decoding
    assert videos.failures == {"garbage": "undecodable", "ghost": "missing_in_shard", "lost": "shard_not_found"}


def test_main_job_holds_small_benches_in_memory_and_streams_large_ones(bench_env, monkeypatch):
    from instraction import workflow
    from instraction.bench.evaluate import BenchVideos, LoadedVideos

    cfg, tables = bench_env["cfg"], bench_env["tables"]
    small = workflow.bench_videos(cfg, tables)
    assert isinstance(small, LoadedVideos) and len(small) == 14 and small.failures == bench_env["videos"].failures
    per_clip = cfg.data.num_frames * cfg.data.size ** 2 * 3
    monkeypatch.setattr(workflow, "BENCH_IN_MEMORY_BYTES", 16 * per_clip)  # 17 clips wanted: one too many
    large = workflow.bench_videos(cfg, tables)
    assert isinstance(large, BenchVideos) and not isinstance(large, dict)
    assert {key for key, _ in large} == set(small)


def test_truncated_shard_fails_only_the_clips_it_lost_and_empty_tasks_score_nan(tmp_path):
    mp4 = _ramp_clip(0)
    samples = [datagen.clip_sample(f"k{i}", f"v{i}", "crack the egg", ["crack egg"], mp4) for i in range(3)]
    full = Path(datagen.write_tar(str(tmp_path / "full.tar"), samples)).read_bytes()
    cut = datagen._offset_of_member(full, "k2.json") + 700  # inside k2.json: k0, k1 are whole
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000.tar").write_bytes(full[:cut])
    dyn = pd.DataFrame({"key": ["k0", "k1", "k2"], "shard": "00000", "video_key": ["k0", "k1", "k2"],
                        "video_id": ["v0", "v1", "v2"], "start": 0.0, "end": 2.0,
                        "caption": ["crack the egg", "whisk the egg", "pour the egg"], "object": "egg",
                        "category": "Ingredients"})
    tables = bench_build.BenchTables(pd.DataFrame(), pd.DataFrame(), dyn)
    cfg = load_config(None, [*TINY, f"data.shards={tmp_path / 'shards'}"])
    videos = load_bench_videos(cfg, tables)
    assert sorted(videos) == ["k0", "k1"] and videos.failures == {"k2": "corrupt_tar"}
    res = evaluate(TimeBlindScorer(), tables, videos, cfg, alignment=False)
    assert np.isnan(res["semantic"]["R@1"]) and np.isnan(res["controls"]["static"]["logic"]["ACC"])
    assert res["counts"]["dynamics"] == {"clips": 3, "scored": 2, "pools": 1, "skipped_clips_missing_video": 1}
    assert res["counts"]["videos"]["failed"] == {"corrupt_tar": 1}
    assert "| toy | – | – | – | – |" in tables_markdown({"toy": res})
    assert "bench/semantic/R_at_1" not in flatten_metrics(res)
    assert json.loads(dumps(res))["semantic"]["R@1"] is None  # strict JSON: NaN becomes null


def test_time_blind_scorer_has_no_gap_time_sensitive_one_does(bench_env):
    cfg, tables, videos = bench_env["cfg"], bench_env["tables"], bench_env["videos"]
    blind = evaluate(TimeBlindScorer(), tables, videos, cfg, alignment=False)
    assert blind["temporal_gap"] == {"semantic": 0.0, "logic": 0.0, "dynamics": 0.0}
    for control in ("reversed", "shuffled"):
        same = {t: blind[t] for t in ("semantic", "logic", "dynamics", "compositional")}
        assert json.loads(dumps(blind["controls"][control])) == json.loads(dumps(same))  # NaN (no seen question) as null

    sensitive = evaluate(TimeSensitiveScorer(_truths(tables)), tables, videos, cfg, alignment=False)
    assert sensitive["semantic"]["R@1"] == 100.0 and sensitive["logic"]["ACC"] == 100.0
    assert sensitive["controls"]["reversed"]["semantic"]["R@1"] == 0.0
    assert sensitive["controls"]["static"]["semantic"]["R@1"] == 0.0  # zero slope: every candidate ties
    assert sensitive["temporal_gap"]["semantic"] > 0 and sensitive["temporal_gap"]["logic"] > 0


def test_scores_match_a_direct_computation_and_skips_are_counted(bench_env):
    cfg, tables, videos = bench_env["cfg"], bench_env["tables"], bench_env["videos"]
    scorer = TimeBlindScorer()
    res = evaluate(scorer, tables, videos, cfg, controls=(), alignment=False)
    sem = tables.semantic[tables.semantic["key"].isin(list(videos))]
    vid = {k: F.normalize(scorer.encode_video(torch.as_tensor(_norm(videos[k], cfg))[None]), dim=-1)[0] for k in sem["key"]}
    scores = np.stack([(F.normalize(scorer.encode_text(list(r.candidates)), dim=-1) @ vid[r.key]).numpy()
                       for r in sem.itertuples()])
    expect = mcq_metrics(scores, sem["answer"].to_numpy())
    assert res["semantic"] == pytest.approx(expect)
    c = res["counts"]
    assert c["semantic"]["questions"] == len(tables.semantic) == c["semantic"]["scored"] + 3
    assert c["semantic"]["skipped_missing_video"] == 3
    assert c["videos"] == {"needed": 17, "loaded": 14,
                           "failed": {"missing_in_shard": 1, "shard_not_found": 1, "undecodable": 1}}
    assert c["dynamics"]["pools"] == 2 and c["dynamics"]["scored"] == 14
    assert 3 <= max(len(x) for x in tables.logic["candidates"]) <= 4  # padded rows were scored
    assert res["chance"]["semantic"]["R@1"] == pytest.approx(25.0)
    assert res["controls"] == {} and "temporal_gap" not in res


def test_questions_on_unseen_pairs_are_scored_apart(bench_env):
    """The seen / unseen split scores exactly what the questions of each side score alone; the control runs carry
    it too, and a bench built before the split (no unseen_pairs column) gives no split rather than a wrong one."""
    import dataclasses

    cfg, tables, videos = bench_env["cfg"], bench_env["tables"], bench_env["videos"]
    assert all(len(p) > 0 for p in tables.semantic["unseen_pairs"])  # holdout 1.0: no training clip at all
    marked = dataclasses.replace(tables, semantic=tables.semantic.copy(), logic=tables.logic.copy())
    for task in ("semantic", "logic"):
        frame = getattr(marked, task)
        frame["unseen_pairs"] = [list(p) if i % 2 else [] for i, p in enumerate(frame["unseen_pairs"])]
    scorer = TimeSensitiveScorer(_truths(tables))
    res = evaluate(scorer, marked, videos, cfg, controls=("static",), alignment=False)
    for task, metric in (("semantic", "R@1"), ("logic", "ACC")):
        frame = getattr(marked, task)
        unseen = frame["unseen_pairs"].map(len) > 0
        for side, rows in (("seen", frame[~unseen]), ("unseen", frame[unseen])):
            alone = evaluate(scorer, dataclasses.replace(marked, **{task: rows}), videos, cfg, controls=(),
                             alignment=False)
            assert res["compositional"][task][side] == pytest.approx(alone[task], nan_ok=True)
            assert res["compositional"][task]["questions"][side] == alone["counts"][task]["scored"]
    assert res["compositional"]["semantic"]["questions"]["seen"] > 0
    assert set(res["controls"]["static"]["compositional"]) == {"semantic", "logic"}
    assert "Sem R@1 unseen" in tables_markdown({"toy": res})
    old = dataclasses.replace(tables, semantic=tables.semantic.drop(columns="unseen_pairs"),
                              logic=tables.logic.drop(columns="unseen_pairs"))
    assert "compositional" not in evaluate(scorer, old, videos, cfg, controls=(), alignment=False)


def _norm(frames, cfg):
    from instraction.data.examples import normalise_video

    return normalise_video(frames[None], cfg.data)[0]


def test_static_control_feeds_one_real_frame_never_an_average(bench_env):
    cfg, tables, videos = bench_env["cfg"], bench_env["tables"], bench_env["videos"]
    scorer = RecordingScorer()
    evaluate(scorer, tables, videos, cfg, controls=("static",), alignment=False)
    clips = torch.cat(scorer.seen)  # [2 * 14, T, 3, H, W]: the normal pass and the static pass
    assert clips.shape[0] == 2 * len(videos)
    constant = [c for c in clips if all(torch.equal(c[0], c[t]) for t in range(1, T))]
    assert len(constant) == len(videos)  # the ramps move, so only static inputs are constant
    real = {k: _norm(v, cfg) for k, v in videos.items()}
    picked = set()
    for clip in constant:
        hits = [(k, t) for k, r in real.items() for t in range(T) if torch.equal(r[t], clip[0])]
        assert hits, "the static frame is not one of the clip's frames"
        picked.add(hits[0][1])
        assert not any(torch.allclose(r.mean(0), clip[0]) for r in real.values())
    assert len(picked) > 1  # the frame is drawn per clip, not always the same index


def test_dtw_path_and_normalised_cost():
    sim = np.full((6, 3), -1.0)
    for i, j in enumerate([0, 0, 1, 1, 2, 2]):
        sim[i, j] = 1.0  # a staircase: frames 0-1 -> phrase 0, 2-3 -> 1, 4-5 -> 2
    cost, path = normalized_dtw_cost(sim)
    assert path == [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2)] and cost == 0.0
    scrambled = sim[[4, 0, 2, 5, 1, 3]]
    assert normalized_dtw_cost(scrambled)[0] > 0.5
    p = dtw_path(np.random.default_rng(0).random((5, 7)))
    assert p[0] == (0, 0) and p[-1] == (4, 6)
    assert all(0 <= a2 - a1 <= 1 and 0 <= b2 - b1 <= 1 for (a1, b1), (a2, b2) in zip(p, p[1:]))


def test_pool_size_curve():
    perfect = pool_size_curve([np.eye(9), np.eye(5)], seed=0)
    assert perfect["sizes"] == [2, 4, 8] and perfect["Mean_R@1"] == [100.0] * 3
    assert perfect["pools"] == [2, 2, 1] and perfect["chance"] == [50.0, 25.0, 12.5]
    flat = pool_size_curve([np.zeros((8, 8))], seed=0)
    assert flat["Mean_R@1"] == [0.0, 0.0, 0.0]  # ties count against the model at every size


def test_report_tables_and_metric_names(bench_env):
    cfg, tables, videos = bench_env["cfg"], bench_env["tables"], bench_env["videos"]
    res = evaluate(TimeSensitiveScorer(_truths(tables)), tables, videos, cfg, alignment=False)
    md = tables_markdown({"toy": res})
    for row in ("| toy |", "| toy · frames reversed |", "| toy · frames shuffled |", "| toy · static (1 random frame) |",
                "| toy · temporal gap (normal − shuffled) | +", "| chance | 25.0 |"):
        assert row in md, row
    assert "Semantic R@1 (%)" in md and "R@10 Mean" in md and "videos: 14/17 loaded" in md
    cmp = compare_table({"trained": res, "untrained": res}, controls=("static",))
    assert cmp.count("· static (1 random frame)") == 2 and "| untrained |" in cmp
    flat = flatten_metrics(res)
    assert flat["bench/semantic/R_at_1"] == 100.0 and "bench/temporal_gap/logic" in flat
    assert "bench/controls/shuffled/dynamics/Mean_R_at_1" in flat
    import re

    assert all(re.fullmatch(r"[/\w.\- :]+", k) for k in flat)  # MLflow's allowed characters
    assert metric_name("bench", "by_category", "Tools & appliances", "Mean_R@1") == \
        "bench/by_category/Tools and appliances/Mean_R_at_1"
    assert metric_name("a", "b+c(d)") == "a/b_c_d_"


def _save_run_dir(cfg, path: Path, vocab_size: int) -> Path:
    from safetensors.torch import save_file

    from instraction.model.instraction import build_model

    torch.manual_seed(0)
    model = build_model(cfg, vocab_size)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "mlflow_run_id").write_text("training-run-123")
    return path


@pytest.mark.integration
def test_evaluate_job_end_to_end(bench_env, tmp_path, monkeypatch):
    """jobs/evaluate.py on a tiny random InstrAction run dir: results.json, tables.md, PNGs, MLflow (SQLite)."""
    import importlib.util

    from mlflow import MlflowClient
    from PIL import Image

    from instraction.data.tokenizer import build_tokenizer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [*TINY, f"data.shards={bench_env['root'] / 'shards'}", f"bench.out={bench_env['cfg'].bench.out}",
                             f"run.dir={tmp_path}"])
    run_dir = _save_run_dir(cfg, tmp_path / "run-a", build_tokenizer(cfg.data.tokenizer).vocab_size)
    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    results = job.main(["--checkpoint", str(run_dir)])

    out = run_dir / "eval-instraction"
    saved = json.loads((out / "results.json").read_text())
    for task, keys in (("semantic", ["R@1", "R@5", "ACC", "MedR", "MeanR"]), ("logic", ["ACC"]),
                       ("dynamics", [f"{d}_R@{k}" for d in ("T2V", "V2T", "Mean") for k in (1, 5, 10)])):
        assert all(isinstance(saved[task][k], float) for k in keys), task
        assert set(saved["controls"]) == set(CONTROLS) and task in saved["controls"]["static"]
    assert set(saved["temporal_gap"]) == {"semantic", "logic", "dynamics"}
    assert saved["alignment"]["clips"] == 14 and 0 <= saved["alignment"]["latents_cost"] <= 2
    assert saved["semantic"] == pytest.approx(results["semantic"])
    md = (out / "tables.md").read_text()
    assert "## Table 1" in md and "## Table 2" in md and "| InstrAction · static (1 random frame) |" in md
    assert "Raw embeddings" in md
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["alignment_cost.png", "alignment_heatmaps.png", "pool_size.png"]
    for p in (out / "plots").glob("*.png"):
        with Image.open(p) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 200

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run((out / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED"
    assert run.data.metrics["bench/semantic/R_at_1"] == pytest.approx(saved["semantic"]["R@1"])
    assert "bench/temporal_gap/dynamics" in run.data.metrics and "bench/alignment/raw_cost" in run.data.metrics
    assert run.data.tags["training_run_id"] == "training-run-123" and run.data.params["data.num_frames"] == "4"
    history = client.get_metric_history(run.info.run_id, "bench/pool_curve/Mean_R_at_1")
    assert [m.step for m in history] == saved["pool_curve"]["sizes"] == [2, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "tables.md", "plots"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {f"plots/{n}" for n in pngs}

    # a checkpoint trained with another split (here: another bench seed) is refused: the bench holds its videos
    with pytest.raises(ConfigError, match="built with holdout_fraction=.*seed=0.*trained with.*seed=7"):
        job.main(["--checkpoint", str(run_dir), "bench.seed=7", "--name", "leaky"])
    assert not (run_dir / "eval-leaky").exists()

    # a config from elsewhere changes neither where the results go nor which training run they are tied to
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    (elsewhere / "eval.yaml").write_text((run_dir / "config.yaml").read_text())
    job.main(["--checkpoint", str(run_dir / "model.safetensors"), "--config", str(elsewhere / "eval.yaml"),
              "--name", "second look"])
    assert (run_dir / "eval-second-look" / "results.json").exists() and os.listdir(elsewhere) == ["eval.yaml"]
    tagged = client.get_run((run_dir / "eval-second-look" / "mlflow_run_id").read_text().strip())
    assert tagged.data.tags["training_run_id"] == "training-run-123"


def test_backbone_scorer_zero_shot(bench_env, tmp_path):
    from instraction.data.tokenizer import build_tokenizer

    cfg, tables, videos = bench_env["cfg"], bench_env["tables"], bench_env["videos"]
    scorer = BackboneScorer.from_config(cfg, build_tokenizer(cfg.data.tokenizer))
    res = evaluate(scorer, tables, videos, cfg, controls=("shuffled",))
    assert 0 <= res["semantic"]["R@1"] <= 100 and "latents_cost" not in res["alignment"]
    assert res["alignment"]["raw_cost"] > 0
    paths = write_plots({"backbone": res, "InstrAction (trained)": res}, tmp_path)  # raw only: latents bars "n/a"
    assert sorted(Path(p).name for p in paths) == ["alignment_cost.png", "alignment_heatmaps_backbone.png",
                                                   "alignment_heatmaps_instraction-trained.png", "pool_size.png"]
    wide = load_config(None, [*TINY, "model.text.width=32"])
    with pytest.raises(ValueError, match="one space"):
        BackboneScorer.from_config(wide, build_tokenizer(cfg.data.tokenizer))


def test_checkpoint_of_another_shape_fails_loudly(tmp_path):
    from instraction.bench.scorers import load_instraction, resolve_checkpoint

    cfg = load_config(None, TINY)
    run_dir = _save_run_dir(cfg, tmp_path / "run", 600)
    found, weights = resolve_checkpoint(run_dir)
    assert found == run_dir / "config.yaml" and weights == run_dir / "model.safetensors"
    assert load_instraction(load_config(found), weights, 600) is not None
    with pytest.raises(ValueError, match="does not match"):
        load_instraction(load_config(found, ["model.embed_dim=32"]), weights, 600)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nothing")


ABLATIONS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", ABLATIONS, ids=[p.stem for p in ABLATIONS])
def test_every_ablation_config_loads(path):
    cfg = load_config(path)
    loss = cfg.loss
    expected = {
        "table4_hn_only": (0.0, 0.0, 0.0), "table4_mam": (1.0, 0.5, 0.0), "table4_dtw": (1.0, 0.0, 0.1),
        "table4_both": (1.0, 0.5, 0.1),
    }
    if path.stem in expected:
        assert (loss.distill_weight, loss.mam_weight, loss.dtw_weight) == expected[path.stem]
    if path.stem.startswith("crosseval_"):
        assert cfg.data.hard_negatives == {"crosseval_semantic": "order_swapped", "crosseval_logic": "verb_altered"}[path.stem]
    if path.stem.startswith("table3_"):
        assert cfg.model.video.kind == ("vit" if "_vit_" in path.stem else "conv3d")
        from instraction.model.instraction import build_model

        model = build_model(cfg, 600)  # buildable here, at the data shape the config trains on
        video = torch.zeros(1, cfg.data.num_frames, 3, cfg.data.size, cfg.data.size)
        assert model.encode_video(video).shape == (1, cfg.model.embed_dim)
    assert cfg.run.name == path.stem.replace("_", "-")  # each ablation's runs are told apart by name


def test_ablation_set_is_complete():
    names = {p.stem for p in ABLATIONS}
    assert {"table4_hn_only", "table4_mam", "table4_dtw", "table4_both", "crosseval_semantic", "crosseval_logic",
            "table3_conv3d_hn_only", "table3_conv3d_instraction", "table3_vit_tiny_hn_only",
            "table3_vit_tiny_instraction"} <= names


@pytest.mark.integration
def test_weights_in_an_s3_run_directory_load_like_local_ones(tmp_path):
    """run.dir=s3://...: the exported weights live on object storage and the evaluate stage loads them there."""
    import datagen

    from instraction.bench.scorers import load_instraction

    cfg = load_config(None, TINY)
    run_dir = _save_run_dir(cfg, tmp_path / "run", 600)
    with datagen.MotoS3({str(run_dir / "model.safetensors"): "runs/r1/model.safetensors"}) as s3:
        remote = load_config(None, [*TINY, f"data.s3.endpoint_url={s3.endpoint_url}"])
        got = load_instraction(remote, "s3://runs/r1/model.safetensors", 600).state_dict()
    want = load_instraction(cfg, run_dir / "model.safetensors", 600).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
