"""The real thing at toy scale: SynthKitchen shards -> Ray Data decode pipeline -> InstrAction model -> Ray Train
with DeepSpeed ZeRO-2 on 2 CPU workers; the loss goes down and every loss term reaches MLflow.

    python -m pytest tests/test_train_synthkitchen.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

import train_helpers as th
from instraction.train.launch import run_training

pytestmark = pytest.mark.integration

STEPS = 14
# 2 cores: 2 x 0.5 CPU for the training workers leaves the decode actor and the shard reads room to run.
SYNTH = ["data.synthetic.num_shards=2", "data.synthetic.clips_per_shard=32", "data.synthetic.size=16",
         "data.synthetic.slots=4", "data.synthetic.max_actions=2", "data.synthetic.min_action_slots=1",
         "data.synthetic.max_action_slots=2", "bench.holdout_fraction=0.0",
         "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5", "data.read_num_cpus=0.25"]


def test_zero2_on_synthkitchen_lowers_the_loss(tmp_path, ray_local):
    from mlflow import MlflowClient

    from instraction.curation.negatives import negatives_for
    from instraction.data.pipeline import training_dataset
    from instraction.data.synthetic import make_synthkitchen
    from instraction.tracking import tracking_uri

    cfg = th.tiny_config(tmp_path, *SYNTH, f"data.shards={tmp_path}/shards", f"data.annotations={tmp_path}/ann",
                         f"train.max_steps={STEPS}", "train.checkpoint_every=7", "train.report_every=7",
                         "train.zero_stage=2", "train.lr=0.003", "train.warmup_steps=2")
    make_synthkitchen(cfg.data.shards, cfg.data.synthetic)
    # no annotation table: SynthKitchen's ground truth stands in
    pipe = training_dataset(cfg, "train", truth_negatives=negatives_for)
    result = run_training(cfg, str(tmp_path / "run"), {"train": pipe.dataset})

    assert result["steps"] == STEPS
    assert result["data_accounting"]["train"]["samples_seen"] == STEPS * cfg.train.batch_size * 2
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    run_id = result["mlflow_run_id"]
    loss = [m.value for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    assert len(loss) == STEPS and np.isfinite(loss).all()
    # it learns: well under the first step's loss, and still going down after the first steps' plunge (the first
    # three, warm-up included, are too close to the 14-step plateau for a ratio against their mean)
    assert np.mean(loss[-3:]) < 0.75 * loss[0] and np.mean(loss[-3:]) < np.mean(loss[3:6]), loss
    for term in ("contrastive_loss", "distill_loss", "dtw_loss", "mam_loss"):
        assert len(client.get_metric_history(run_id, term)) == STEPS, term
    # the trained encoder, logged as a pyfunc model and registered under the run directory's name
    assert client.get_registered_model("run").latest_versions[0].run_id == run_id
    report = pipe.report()
    assert report["delivered"] > 0 and report["clips_read"] == report["delivered"] + report["dropped_total"]
