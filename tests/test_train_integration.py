"""Ray Train + DeepSpeed on real local Ray (2 CPU workers, gloo): training, resume, failure restarts, MLflow.

    python -m pytest tests/test_train_integration.py -q

The toy model (tests/train_helpers.py) keeps each run to a few seconds of training; what is under test is the
distributed machinery: ZeRO stages, checkpoints, data position, non-finite steps, MLflow, FailureConfig.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray.train
import torch
from safetensors.torch import load_file

import train_helpers as th
from instraction.train.launch import run_training

pytestmark = pytest.mark.integration

STEPS, EVERY = 12, 4


@pytest.fixture(scope="module")
def ray_workers(ray_local):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(th)  # the workers cannot import tests/ by name
    return ray_local


@pytest.fixture(scope="module")
def dataset(ray_workers):
    return th.toy_dataset(64)


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One SQLite store for the module's runs (creating a store costs seconds of schema migrations)."""
    return f"tracking.tracking_uri=sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def train(cfg, run_dir, dataset):
    return run_training(cfg, str(run_dir), {"train": dataset}, model_builder=th.toy_model_builder,
                        collate=th.toy_collate)


def zero2(tmp, mlflow_db, *overrides):
    return th.tiny_config(tmp, mlflow_db, f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}",
                          "train.report_every=4", "train.zero_stage=2", "train.max_failures=0", *overrides)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, dataset, mlflow_db):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = zero2(tmp, mlflow_db)
    return cfg, train(cfg, tmp / "run", dataset)


def mlflow_client(cfg):
    from mlflow import MlflowClient

    from instraction.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(cfg))


def test_zero2_run_trains_and_is_tracked_in_mlflow(uninterrupted):
    cfg, result = uninterrupted
    assert result["steps"] == STEPS and result["metrics"]["start_step"] == 0
    assert result["checkpoint"].endswith(f"checkpoint_{STEPS:08d}")
    assert result["data_accounting"]["train"]["samples_seen"] == STEPS * 2 * 4
    client = mlflow_client(cfg)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.zero_stage"] == "2" and run.data.params["train.max_steps"] == str(STEPS)
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == STEPS
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])  # it learns
    for key in ("cls_loss", "reg_loss", "lr", "grad_norm", "data_wait_share", "clips_per_s", "skipped_nonfinite"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), key
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert lrs[0] < lrs[1] and lrs[-1] < lrs[2]  # warmup, then decay
    assert run.data.metrics["data/train/samples_seen"] == STEPS * 2 * 4
    from instraction.train.loop import PhaseTimes

    phases = PhaseTimes.from_metrics(result["metrics"])
    assert {"data_wait", "forward", "loss_sync", "backward", "optimizer", "log", "step", "checkpoint"} <= set(phases)
    inside = sum(phases[k] for k in ("data_wait", "forward", "loss_sync", "backward", "optimizer", "log"))
    assert 0 < inside <= phases["step"] * 1.01 and phases["checkpoint"] > 0  # the parts fit in the whole
    assert result["metrics"]["torch_threads"] == max(1, int(cfg.train.cpus_per_worker))  # not every core
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model.safetensors"} <= artifacts
    weights = load_file(result["weights"])
    assert weights["net.0.weight"].shape == (32, th.FEATURES) and weights["temperature"].shape == ()


def test_samples_seen_sums_what_each_worker_trained_on(tmp_path, dataset, mlflow_db):
    """Rank 1 drops a row of every batch (a worker that skips clips): the count is the sum over workers."""
    cfg = th.tiny_config(tmp_path, mlflow_db, "train.max_steps=4", "train.checkpoint_every=4", "train.max_failures=0")
    result = run_training(cfg, str(tmp_path / "run"), {"train": dataset}, model_builder=th.toy_model_builder,
                          collate=th.short_on_rank1_collate)
    assert result["data_accounting"]["train"]["samples_seen"] == 4 * 4 + 4 * 3


def test_after_step_runs_on_every_rank_in_workers_with_fixed_malloc_thresholds(tmp_path, dataset, mlflow_db):
    cfg = th.tiny_config(tmp_path, mlflow_db, "train.max_steps=3", "train.checkpoint_every=3", "train.max_failures=0")
    record = tmp_path / "steps.txt"
    run_training(cfg, str(tmp_path / "run"), {"train": dataset}, model_builder=th.toy_model_builder,
                 collate=th.toy_collate, after_step=th.RecordSteps(record))
    lines = [line.split() for line in record.read_text().splitlines()]
    by_pid: dict[str, list[int]] = {}
    for pid, step, _ in lines:
        by_pid.setdefault(pid, []).append(int(step))
    assert sorted(by_pid.values()) == [[1, 2, 3], [1, 2, 3]]  # two workers, each step once, in order
    assert {threshold for _, _, threshold in lines} == {str(32 * 2**20)}


def test_resumed_run_continues_with_identical_weights(tmp_path, dataset, uninterrupted, mlflow_db):
    """Crash after step 6 with no retries (checkpoint at 4), then fit the same run dir again: it resumes at step 4
    and ends with the uninterrupted run's exact weights (same data, same order, nothing repeated or skipped)."""
    cfg = zero2(tmp_path, mlflow_db, "train.fail_at_step=6")
    with pytest.raises(ray.train.TrainingFailedError):
        train(cfg, tmp_path / "run", dataset)
    first_id = (tmp_path / "run" / "mlflow_run_id").read_text()
    result = train(cfg, tmp_path / "run", dataset)
    assert result["steps"] == STEPS and result["mlflow_run_id"] == first_id
    assert result["metrics"]["resume_skip_s"] >= 0 and result["metrics"]["start_step"] == EVERY
    expected = load_file(uninterrupted[1]["weights"])
    got = load_file(result["weights"])
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    history = mlflow_client(cfg).get_metric_history(first_id, "loss")
    steps = sorted(m.step for m in history)  # 1..5 from the attempt that died at 6, then 5..12 after resuming at 4
    assert steps == sorted([*range(1, 6), *range(EVERY + 1, STEPS + 1)])


def test_cached_split_run_resumes_with_identical_weights(tmp_path, dataset, mlflow_db):
    """data.worker_cache: each worker reads its split once and permutes it per epoch. A run that dies after step 6
    and is fitted again resumes at step 4 (without reading anything twice) and ends with the weights of the same
    run uninterrupted."""
    cached = ("data.worker_cache=true", "train.zero_stage=0", "run.seed=3")
    straight = train(zero2(tmp_path / "a", mlflow_db, *cached), tmp_path / "a" / "run", dataset)
    assert straight["steps"] == STEPS and straight["metrics"]["cache_fill_s"] > 0
    assert straight["data_accounting"]["train"]["samples_seen"] == STEPS * 2 * 4
    cfg = zero2(tmp_path / "b", mlflow_db, *cached, "train.fail_at_step=6")
    with pytest.raises(ray.train.TrainingFailedError):
        train(cfg, tmp_path / "b" / "run", dataset)
    resumed = train(cfg, tmp_path / "b" / "run", dataset)
    assert resumed["steps"] == STEPS and resumed["metrics"]["resume_skip_s"] == 0
    expected, got = load_file(straight["weights"]), load_file(resumed["weights"])
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_worker_failure_is_restarted_from_last_checkpoint(tmp_path, dataset, uninterrupted, mlflow_db):
    """FailureConfig(max_failures=1): rank 0 dies once at step 6; the group restarts from step 4 and completes."""
    cfg = zero2(tmp_path, mlflow_db, "train.fail_at_step=6", "train.max_failures=1")
    result = train(cfg, tmp_path / "run", dataset)
    assert result["steps"] == STEPS
    client = mlflow_client(cfg)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["worker_failures"] == 1
    assert "injected worker failure" in run.data.tags["last_worker_failure"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    repeated = len(steps) - len(set(steps))
    assert 0 < repeated <= EVERY  # lost work: at most one checkpoint interval
    expected = load_file(uninterrupted[1]["weights"])
    got = load_file(result["weights"])
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_nonfinite_steps_are_skipped_and_counted_zero0_fp32(tmp_path, ray_workers, mlflow_db):
    """ZeRO-0 fp32 (the loop checks gradients itself): a NaN loss and a NaN gradient each skip one step."""
    data = th.toy_dataset(64, poison=(1,), bad_grad=(13,))
    cfg = th.tiny_config(tmp_path, mlflow_db, "train.max_steps=8", "train.checkpoint_every=8", "train.zero_stage=0")
    result = train(cfg, tmp_path / "run", data)
    assert result["metrics"]["skipped_nonfinite"] == 2
    assert result["data_accounting"]["train"]["skipped_nonfinite_steps"] == 2
    assert all(v.isfinite().all() for v in load_file(result["weights"]).values())


def test_zero3_bf16_gathers_full_weights_and_skips_bad_gradients(tmp_path, ray_workers):
    data = th.toy_dataset(64, bad_grad=(5,))
    cfg = th.tiny_config(tmp_path, "train.max_steps=6", "train.checkpoint_every=3", "train.zero_stage=3",
                         "train.precision=bf16", "tracking.enabled=false")
    result = train(cfg, tmp_path / "run", data)
    assert result["steps"] == 6 and result["mlflow_run_id"] is None
    assert result["metrics"]["skipped_nonfinite"] == 1
    weights = load_file(result["weights"])
    assert weights["net.0.weight"].shape == (32, th.FEATURES)  # gathered, not this rank's ZeRO-3 slice
    assert weights["temperature"].shape == () and all(v.isfinite().all() for v in weights.values())
