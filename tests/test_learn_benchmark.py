"""The learning benchmark (instraction/train/learn_benchmark.py): the main job's data stages, the training split
decoded once and cached, an in-process training replica that learns and repeats itself, InstrAct Bench scores.

    python -m pytest tests/test_learn_benchmark.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import train_helpers as th
from instraction.train import learn_benchmark as lb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def learn_env(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("learn")
    overrides = [*th.TINY_OVERRIDES, *th.TINY_DATA, f"run.dir={root}/runs", f"data.shards={root}/sk/shards",
                 f"data.annotations={root}/sk/annotations", "data.make_synthetic=true", "bench.holdout_fraction=0.3",
                 "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5", "data.read_num_cpus=0.25"]
    cfg = lb.load_config(None, overrides)
    lb.prepare(cfg)
    return root, overrides, cfg


def test_training_rows_are_decoded_once_and_cached(learn_env, monkeypatch):
    root, _, cfg = learn_env
    rows = lb.training_rows(cfg)
    assert rows and {"video", "text_ids", "neg_ids", "verb_ids"} <= set(rows[0])
    assert rows[0]["video"].shape == (cfg.data.num_frames, cfg.data.size, cfg.data.size, 3)
    import instraction.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "training_dataset", lambda *a, **k: pytest.fail("read again"))
    again = lb.training_rows(cfg)
    assert [r["key"] for r in again] == [r["key"] for r in rows]
    other = lb.load_config(None, [*learn_env[1], "data.max_negatives=3"])  # another data config: another cache
    assert lb._rows_key(other) != lb._rows_key(cfg)
    for same in ("model.perceiver.layers=2", "data.augment.object_dropout=0.5", "data.augment.hflip=0.0",
                 "data.worker_cache=false", "data.materialize=true", "data.read_num_cpus=0.5"):
        assert lb._rows_key(lb.load_config(None, [*learn_env[1], same])) == lb._rows_key(cfg), same  # collate-time


def test_replica_learns_and_repeats_itself(learn_env):
    _, _, cfg = learn_env
    rows = lb.training_rows(cfg)
    cfg.train.batch_size = 4
    _, first = lb.train_in_process(cfg, rows, 2, log=lambda line: None)
    _, again = lb.train_in_process(cfg, rows, 2, log=lambda line: None)
    assert first["last_losses"] == again["last_losses"]  # seeded order, augmentation and init
    lines = []
    model, run = lb.train_in_process(cfg, rows, 40, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("step 40/40")
    start = lb.train_in_process(cfg, rows, 1, log=lambda line: None)[1]["last_losses"]["loss"]
    assert run["last_losses"]["loss"] < 0.8 * start
    assert not model.training


def test_main_scores_the_bench_and_appends_json_lines(learn_env, capsys):
    root, overrides, _ = learn_env
    out = root / "learn.jsonl"
    assert lb.main(["--steps", "3", "--seeds", "0", "1", "--out", str(out), *overrides]) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in results] == [0, 1] and all(r["steps"] == 3 for r in results)
    for r in results:
        for key in ("semantic_R@1", "logic_ACC", "static_semantic_R@1"):
            assert 0.0 <= r[key] <= 100.0 or np.isnan(r[key])
        assert r["s_per_step"] > 0 and r["rows"] > 0 and "semantic_unseen_R@1" in r
    assert capsys.readouterr().out.count('"seed": ') == 2
