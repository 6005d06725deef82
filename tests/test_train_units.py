"""Unit tests of the training pieces, no Ray Train: schedule, DeepSpeed config, engine + checkpoint round trips
(one process, world size 1), the resumable batch stream, MLflow tracking and credential hygiene.

    python -m pytest tests/test_train_units.py -q
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket

import numpy as np
import pytest
import torch

import train_helpers as th
from instraction import tracking
from instraction.storage import redact
from instraction.train import checkpoint as ckpt
from instraction.train import engine
from instraction.train.batches import BatchStream, to_device
from instraction.train.engine import CONFIG_DIR, build_engine, deepspeed_config, floating_dtype, is_plain, param_groups
from instraction.train.launch import cpus_needed, data_accounting, flat_accounting, storage, storage_filesystem
from instraction.train.schedule import WarmupCosine, build_scheduler, restore_position


# ------------------------------------------------------------------------------------------------ schedule
def test_warmup_then_cosine_to_floor():
    m = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [m(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert m(4) == pytest.approx(1.0)
    assert m(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert m(14) == pytest.approx(0.1) and m(1000) == pytest.approx(0.1)
    decay = [m(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_cpus_needed_counts_decode_beside_training_only_when_streaming(tmp_path):
    """Streaming: 2 workers x 1 CPU + 2 decode actors x 1 CPU + reads 0.25 run side by side; materialised, the
    read tasks decode (no actors) and finish before the workers start, so the larger phase is the peak."""
    base = ["train.num_workers=2", "train.cpus_per_worker=1", "data.decode_concurrency=2", "data.decode_num_cpus=1",
            "data.read_num_cpus=0.25"]
    assert cpus_needed(th.tiny_config(tmp_path, *base, "data.materialize=false")) == pytest.approx(4.25)
    assert cpus_needed(th.tiny_config(tmp_path, *base, "data.materialize=true")) == pytest.approx(2)
    assert cpus_needed(th.tiny_config(tmp_path, *base, "data.materialize=true", "train.cpus_per_worker=0.1")) == 0.25
    materialised = th.tiny_config(tmp_path, *base, "data.materialize=true")
    assert cpus_needed(materialised, side_by_side=True) == pytest.approx(2.25)  # jobs/pretrain.py's local Ray


def test_scheduler_state_round_trips():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_scheduler(opt, 2, 10, 0.0)
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched2 = build_scheduler(opt2, 2, 10, 0.0)
    restore_position(sched2, state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(WarmupCosine(2, 10, 0.0)(5))
    sched.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(WarmupCosine(2, 10, 0.0)(6))


def test_resume_with_more_steps_or_another_lr_follows_the_new_schedule():
    """A run extended from 10 to 100 steps (and given lr 2) continues on the new cosine, not the old one's floor."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_scheduler(opt, 2, 10, 0.05)
    for _ in range(10):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # finished: at the floor
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=2.0)
    sched2 = build_scheduler(opt2, 2, 100, 0.05)  # the loop's order: scheduler, then the checkpoint is loaded
    opt2.load_state_dict(opt.state_dict())  # what DeepSpeed's optimizer load does: the old rates come back
    restore_position(sched2, sched.state_dict())
    assert sched2.last_epoch == 10 and sched2.lr_lambdas[0].total_steps == 100
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.0 * WarmupCosine(2, 100, 0.05)(10))
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.0 * WarmupCosine(2, 100, 0.05)(11)) and sched2.get_last_lr()


# ------------------------------------------------------------------------------------------------ engine config
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_takes_run_values(tmp_path, stage):
    cfg = th.tiny_config(tmp_path, f"train.zero_stage={stage}", "train.batch_size=6", "train.grad_clip=0.5",
                         "train.precision=bf16")
    ds = deepspeed_config(cfg.train)
    assert (CONFIG_DIR / f"zero{stage}.json").exists()
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_accumulation_steps"] == 1
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert not is_plain(ds)


def test_plain_fp32_zero0_is_clipped_by_the_loop(tmp_path):
    ds = deepspeed_config(th.tiny_config(tmp_path, "train.zero_stage=0").train)
    assert is_plain(ds) and ds["gradient_clipping"] == 0.0


def test_bf16_mixed_keeps_fp32_weights_and_autocasts_the_forward(tmp_path, process_group):
    """precision=bf16-mixed: DeepSpeed's torch_autocast (bf16 matmuls), fp32 weights and optimizer; with ZeRO-0
    the loop clips and checks gradients itself (the plain path)."""
    cfg = th.tiny_config(tmp_path, "train.zero_stage=0", "train.precision=bf16-mixed")
    ds = deepspeed_config(cfg.train)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert not ds["bf16"]["enabled"] and is_plain(ds)
    seen = []
    engine, _ = build_engine(th.ToyModel(), cfg.train)
    engine.module.net[0].register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    assert floating_dtype(engine) == torch.float32
    before = engine.module.net[0].weight.detach().clone()
    (batch,) = _batches(1)
    out = engine(to_device(batch, torch.device("cpu"), floating_dtype(engine)))
    engine.backward(out["loss"])
    engine.step()
    assert seen == [torch.bfloat16]  # the Linear ran in bf16 ...
    weight = engine.module.net[0].weight
    assert weight.dtype == torch.float32 and not torch.equal(weight.detach(), before)  # ... the fp32 weight learned


def test_deepspeed_config_found_outside_the_package_checkout(tmp_path, monkeypatch):
    """Installed non-editable (site-packages), the package-relative configs/deepspeed is missing: the lookup falls
    back to the working directory's, and $INSTRACTION_HOME's wins over both; nothing found names every path tried."""
    train = th.tiny_config(tmp_path, "train.zero_stage=1").train
    monkeypatch.setattr(engine, "CONFIG_DIR", tmp_path / "site-packages" / "configs" / "deepspeed")
    monkeypatch.delenv(engine.HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        deepspeed_config(train)
    assert str(tmp_path / "site-packages" / "configs" / "deepspeed" / "zero1.json") in str(missing.value)
    assert str(tmp_path / "configs" / "deepspeed" / "zero1.json") in str(missing.value)
    assert engine.HOME_ENV in str(missing.value)

    def write_config(root, bucket):
        (root / "configs" / "deepspeed").mkdir(parents=True)
        (root / "configs" / "deepspeed" / "zero1.json").write_text(json.dumps(
            {"zero_optimization": {"stage": 1, "reduce_bucket_size": bucket}}))

    write_config(tmp_path, 111)
    assert deepspeed_config(train)["zero_optimization"]["reduce_bucket_size"] == 111  # the working directory's
    write_config(tmp_path / "home", 222)
    monkeypatch.setenv(engine.HOME_ENV, str(tmp_path / "home"))
    assert deepspeed_config(train)["zero_optimization"]["reduce_bucket_size"] == 222
    explicit = th.tiny_config(tmp_path, f"train.deepspeed_config={tmp_path / 'nowhere.json'}").train
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        deepspeed_config(explicit)


def test_no_weight_decay_on_biases_norms_embeddings_and_scalars():
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 4), "norm": torch.nn.LayerNorm(4),
                                 "token_embedding": torch.nn.Embedding(10, 4)})
    model.logit_scale = torch.nn.Parameter(torch.zeros(()))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 5  # proj.bias, norm weight+bias, embedding, logit_scale


def test_adamw_is_fused_where_torch_has_the_kernel_and_updates_as_the_loop_does(tmp_path):
    train = th.tiny_config(tmp_path, "train.lr=0.01", "train.weight_decay=0.1").train

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 1))

    fused_model, loop_model = model(), model()
    fused = engine.adamw(param_groups(fused_model, 0.1), train)
    loop = torch.optim.AdamW(param_groups(loop_model, 0.1), lr=0.01, betas=tuple(train.betas))
    assert fused.defaults["fused"] and not loop.defaults.get("fused")
    assert fused.defaults["betas"] == tuple(train.betas) and fused.param_groups[0]["weight_decay"] == 0.1
    x = torch.randn(16, 6)
    for _ in range(5):
        for m, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    half = torch.nn.Linear(2, 2).half()  # fp16 parameters: the per-tensor loop
    assert not engine.adamw(param_groups(half, 0.0), train).defaults.get("fused")


# ------------------------------------------------------------------------------------------------ engine + checkpoint
@pytest.fixture(scope="module")
def process_group():
    """A world-size-1 gloo group in this process (what Ray Train sets up in each worker)."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_samples_seen_is_each_ranks_own_count_summed(tmp_path):
    """Two gloo processes with different counts (rank 1 trained on fewer clips): the sum, not rank 0's count times
    the world size."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(th.sum_on_ranks, args=([40, 28], port, str(tmp_path)), nprocs=2)
    assert [int((tmp_path / str(rank)).read_text()) for rank in range(2)] == [68, 68]


def test_batch_rows_counts_the_rows_a_batch_has():
    from instraction.train.loop import batch_rows

    batch = th.toy_collate({k: v[:3] for k, v in _columns(th.toy_rows(8)).items()})
    assert batch_rows(batch) == 3


def _columns(rows):
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _batches(n: int, seed: int = 0):
    rows = th.toy_rows(4 * n, seed)
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return [th.toy_collate({k: v[4 * i:4 * i + 4] for k, v in cols.items()}) for i in range(n)]


def _run(engine, scheduler, batches):
    for batch in batches:
        out = engine(to_device(batch, torch.device("cpu"), floating_dtype(engine)))
        engine.backward(out["loss"])
        engine.step()
        scheduler.step()


def _weights(engine, path):
    ckpt.export_weights(engine, path, rank=0)
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("stage", [0, 2])
def test_resume_with_another_world_size_only_where_the_optimizer_state_is_not_partitioned(tmp_path, process_group,
                                                                                         stage):
    cfg = th.tiny_config(tmp_path, f"train.zero_stage={stage}")
    torch.manual_seed(1)
    engine, opt = build_engine(th.ToyModel(), cfg.train)
    sched = build_scheduler(opt, 2, 10, 0.1)
    _run(engine, sched, _batches(1))
    ckpt.save(engine, sched, ckpt.TrainState(step=1, epoch=0, batch_in_epoch=1), tmp_path / "ck", 0, 2)  # "2 workers"
    if stage == 0:
        assert ckpt.load(engine, sched, tmp_path / "ck", 0, 1).step == 1  # replicated state: resumes, with a warning
    else:
        with pytest.raises(RuntimeError, match="written by 2 workers under ZeRO stage 2"):
            ckpt.load(engine, sched, tmp_path / "ck", 0, 1)


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (1, "fp32"), (2, "fp32"), (2, "bf16"), (3, "bf16")])
def test_checkpoint_restores_model_optimizer_scheduler_and_rng(tmp_path, process_group, stage, precision):
    """Train 2 steps, save, train 2 more (reference); a fresh engine loaded from the save then trains the same 2
    steps to the same weights: model, ZeRO optimizer partition, scheduler and RNG all came back."""
    cfg = th.tiny_config(tmp_path, f"train.zero_stage={stage}", f"train.precision={precision}")
    batches = _batches(4)

    def fresh():
        torch.manual_seed(1)
        engine, opt = build_engine(th.ToyModel(), cfg.train)
        return engine, build_scheduler(opt, 2, 10, 0.1)

    engine, sched = fresh()
    _run(engine, sched, batches[:2])
    ckpt.save(engine, sched, ckpt.TrainState(step=2, epoch=0, batch_in_epoch=2), tmp_path / "ck", 0, 1)
    noise_after_save = torch.rand(3)
    _run(engine, sched, batches[2:])
    reference = _weights(engine, tmp_path / "ref.safetensors")

    engine2, sched2 = fresh()
    torch.manual_seed(99)  # a resumed process starts from other RNG state
    state = ckpt.load(engine2, sched2, tmp_path / "ck", 0, 1)
    assert (state.step, state.batch_in_epoch) == (2, 2) and sched2.last_epoch == 2
    assert torch.equal(torch.rand(3), noise_after_save)
    _run(engine2, sched2, batches[2:])
    resumed = _weights(engine2, tmp_path / "resumed.safetensors")
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert resumed["temperature"].shape == ()  # the 0-dim parameter keeps its shape through DeepSpeed


def test_resume_keeps_this_runs_optimizer_kernel(tmp_path, process_group, monkeypatch):
    """A checkpoint written by a run whose AdamW was not fused does not switch the fused kernel off on resume."""
    cfg = th.tiny_config(tmp_path, "train.zero_stage=0")
    unfused = lambda groups, train: torch.optim.AdamW(groups, lr=train.lr)  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(engine, "adamw", unfused)
        old, old_opt = build_engine(th.ToyModel(), cfg.train)
    _run(old, build_scheduler(old_opt, 2, 10, 0.1), _batches(1))
    ckpt.save(old, build_scheduler(old_opt, 2, 10, 0.1), ckpt.TrainState(step=1), tmp_path / "ck", 0, 1)
    new, opt = build_engine(th.ToyModel(), cfg.train)
    assert opt.defaults["fused"]
    ckpt.load(new, build_scheduler(opt, 2, 10, 0.1), tmp_path / "ck", 0, 1)
    assert all(g["fused"] for g in opt.param_groups) and opt.state  # its state loaded, its own kernel kept


def test_export_has_full_shapes_and_metadata(tmp_path, process_group):
    from safetensors import safe_open

    engine, _ = build_engine(th.ToyModel(), th.tiny_config(tmp_path, "train.zero_stage=3").train)
    ckpt.export_weights(engine, tmp_path / "w.safetensors", rank=0, metadata={"step": "7"})
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "7"
        assert f.get_tensor("net.0.weight").shape == (32, th.FEATURES)


# ------------------------------------------------------------------------------------------------ batch stream
@pytest.fixture(scope="module")
def rows_iterator(ray_local):
    """A real Ray Data iterator over 22 toy rows (5 full batches of 4 per epoch, 2 rows dropped)."""
    import ray.data

    return ray.data.from_items(th.toy_rows(22)).iterator()


def _ids(stream, n):
    it = iter(stream)
    out = []
    for _ in range(n):
        batch, wait = next(it)
        assert wait >= 0
        out.append(batch["id"].tolist())
    return out


@pytest.mark.integration
def test_stream_rolls_over_epochs_and_tracks_position(rows_iterator):
    stream = BatchStream(rows_iterator, 4, th.toy_collate, prefetch=0)
    ids = _ids(stream, 7)
    assert ids[5:] == ids[:2]  # epoch 1 replays epoch 0's order (no shuffle)
    assert sorted(sum(ids[:5], [])) == list(range(20))  # full batches only
    assert (stream.epoch, stream.batch_in_epoch) == (1, 2)


@pytest.mark.integration
def test_resumed_stream_continues_where_it_stopped(rows_iterator):
    straight = _ids(BatchStream(rows_iterator, 4, th.toy_collate, prefetch=0), 9)
    resumed = BatchStream(rows_iterator, 4, th.toy_collate, epoch=0, batch_in_epoch=3, prefetch=0)
    assert _ids(resumed, 6) == straight[3:9]
    assert resumed.resume_skip_s > 0


@pytest.mark.integration
def test_seeded_shuffle_is_reproducible_per_epoch(rows_iterator):
    make = lambda: BatchStream(rows_iterator, 4, th.toy_collate, shuffle_buffer=8, seed=3, prefetch=0)  # noqa: E731
    a, b = _ids(make(), 10), _ids(make(), 10)
    assert a == b and a[:5] != a[5:]  # same run -> same order; the next epoch is shuffled differently


class _CountingShard:
    """A Ray Data iterator that counts how often it is read."""

    def __init__(self, shard):
        self.shard, self.calls = shard, []

    def iter_batches(self, **kwargs):
        self.calls.append("iter_batches")
        return self.shard.iter_batches(**kwargs)

    def iter_torch_batches(self, **kwargs):
        self.calls.append("iter_torch_batches")
        return self.shard.iter_torch_batches(**kwargs)


@pytest.mark.integration
def test_cached_stream_reads_once_and_permutes_every_epoch(rows_iterator):
    shard = _CountingShard(rows_iterator)
    stream = BatchStream(shard, 4, th.toy_collate, cache=True, seed=3, rank=1)
    ids = _ids(stream, 14)  # into a third epoch
    assert shard.calls == ["iter_batches"]  # read once, whatever the number of epochs
    ids = ids[:10]
    epochs = [sorted(sum(ids[i:i + 5], [])) for i in (0, 5)]
    assert all(len(e) == 20 and len(set(e)) == 20 and set(e) <= set(range(22)) for e in epochs)  # full batches
    assert ids[:5] != ids[5:]  # each epoch its own permutation
    assert stream.cache_fill_s > 0 and (stream.epoch, stream.batch_in_epoch) == (2, 4)
    again = BatchStream(rows_iterator, 4, th.toy_collate, cache=True, seed=3, rank=1)
    assert _ids(again, 10) == ids  # seeded by (seed, rank, epoch)
    other_rank = BatchStream(rows_iterator, 4, th.toy_collate, cache=True, seed=3, rank=0)
    assert _ids(other_rank, 5) != ids[:5]


@pytest.mark.integration
def test_cached_stream_resumes_exactly_without_rereading(rows_iterator):
    straight = _ids(BatchStream(rows_iterator, 4, th.toy_collate, cache=True, seed=1), 12)
    shard = _CountingShard(rows_iterator)
    resumed = BatchStream(shard, 4, th.toy_collate, cache=True, seed=1, epoch=1, batch_in_epoch=2)
    assert _ids(resumed, 5) == straight[7:12] and shard.calls == ["iter_batches"]
    at_end = BatchStream(rows_iterator, 4, th.toy_collate, cache=True, seed=1, epoch=0, batch_in_epoch=5)
    assert _ids(at_end, 2) == straight[5:7]  # a checkpoint after an epoch's last batch resumes at the next epoch
    too_far = BatchStream(rows_iterator, 4, th.toy_collate, cache=True, seed=1, batch_in_epoch=6)
    with pytest.raises(RuntimeError, match="cannot resume at batch 6"):
        next(iter(too_far))


@pytest.mark.integration
def test_cached_stream_refuses_a_split_over_its_memory_limit(rows_iterator):
    stream = BatchStream(rows_iterator, 4, th.toy_collate, cache=True, cache_max_gib=1e-7)  # ~107 bytes
    with pytest.raises(RuntimeError, match="outgrows the worker cache"):
        next(iter(stream))


@pytest.mark.integration
def test_stream_refuses_a_split_smaller_than_a_batch(ray_local):
    import ray.data

    for cache in (False, True):
        stream = BatchStream(ray.data.from_items(th.toy_rows(3)).iterator(), 4, th.toy_collate, prefetch=0,
                             cache=cache)
        with pytest.raises(RuntimeError, match="no full batch"):
            next(iter(stream))


# ------------------------------------------------------------------------------------------------ tracking
def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = th.tiny_config(tmp_path)
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    cfg.tracking.tracking_uri = "http://mlflow.internal:5000"
    assert tracking.tracking_uri(cfg) == "http://mlflow.internal:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking.tracking_uri(cfg) == "sqlite:///elsewhere.db"


def test_no_credential_reaches_the_params(tmp_path):
    cfg = th.tiny_config(tmp_path, "data.shards=s3://AKIAEXAMPLE:hunter2@bucket/shards",
                         "data.s3.endpoint_url=http://user:pa55@minio:9000")
    params = tracking.config_params(cfg)
    assert params["data.shards"] == "s3://***@bucket/shards"
    assert params["data.s3.endpoint_url"] == "http://***@minio:9000"
    assert not any(secret in v for v in params.values() for secret in ("hunter2", "pa55", "AKIAEXAMPLE"))
    assert params["data.tokenizer"] == "words"  # "token" inside a word is not a secret key
    assert redact("abc", "s3.aws_secret_access_key") == "***"


@pytest.mark.integration
def test_open_run_reuses_the_run_of_a_run_dir(tmp_path):
    from mlflow import MlflowClient

    cfg = th.tiny_config(tmp_path, "train.max_steps=5")
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    run_id = tracking.open_run(cfg, run_dir)
    cfg.train.max_steps = 9
    assert tracking.open_run(cfg, run_dir) == run_id
    run = MlflowClient(tracking_uri=tracking.tracking_uri(cfg)).get_run(run_id)
    assert run.data.params["train.max_steps"] == "5" and run.data.tags["resumed_with.train.max_steps"] == "9"
    assert len(run.data.params) == len(tracking.config_params(cfg))

    logger = tracking.MetricLogger(tracking.tracking_uri(cfg), run_id, flush_every_s=0.05)
    for step in range(1, 4):
        logger.log(step, {"loss": 1.0 / step, "clips_per_s": 10.0})
    logger.close()
    history = MlflowClient(tracking_uri=tracking.tracking_uri(cfg)).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]


@pytest.mark.integration
def test_metric_logger_flush_writes_what_is_queued_now(tmp_path):
    from mlflow import MlflowClient

    cfg = th.tiny_config(tmp_path)
    run_id = tracking.open_run(cfg, str(tmp_path))
    logger = tracking.MetricLogger(tracking.tracking_uri(cfg), run_id, flush_every_s=3600)  # the thread never wakes
    for step in range(1, 4):
        logger.log(step, {"loss": float(step)})
    logger.flush()  # what a checkpoint does before it is reported
    history = MlflowClient(tracking_uri=tracking.tracking_uri(cfg)).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    logger.close()


@pytest.mark.integration
def test_metric_logger_never_raises_into_training(tmp_path):
    logger = tracking.MetricLogger(f"sqlite:///{tmp_path}/m.db", "no-such-run", flush_every_s=0.05)
    logger.log(1, {"loss": 1.0})
    logger.close()
    assert logger._error is not None


# ------------------------------------------------------------------------------------------------ launch helpers
def test_storage_is_the_run_dir_unless_configured(tmp_path):
    cfg = th.tiny_config(tmp_path)
    assert storage(cfg, str(tmp_path / "runs" / "r1")) == (str(tmp_path / "runs"), "r1")
    cfg.train.storage_path = "s3://bucket/ckpt"
    assert storage(cfg, str(tmp_path / "runs" / "r1")) == ("s3://bucket/ckpt", "r1")


def test_s3_compatible_storage_goes_through_s3fs_without_credentials(tmp_path, monkeypatch):
    import pyarrow.fs

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    cfg = th.tiny_config(tmp_path)
    assert storage_filesystem(cfg, "s3://bucket/ckpt") == (None, "s3://bucket/ckpt")  # AWS itself: Ray decides
    assert storage_filesystem(cfg, str(tmp_path)) == (None, str(tmp_path))
    cfg.data.s3.endpoint_url = "http://minio:9000"
    fs, path = storage_filesystem(cfg, "s3://bucket/ckpt")
    assert isinstance(fs, pyarrow.fs.PyFileSystem) and path == "bucket/ckpt"
    assert fs.handler.fs.endpoint_url == "http://minio:9000" and not fs.handler.fs.key


def test_data_accounting_includes_the_annotation_tables_counts(tmp_path):
    """The table's totals (by decision and reason), not this curation run's counts, which are zero when every shard
    was curated before."""
    (tmp_path / "ann").mkdir()
    table = {"by_decision": {"kept": 9, "dropped": 2}, "by_reason": {"ok": 9, "not_instructional": 2}, "rows": 11}
    (tmp_path / "ann" / "summary.json").write_text(json.dumps(
        {"counts": {"by_decision": {}, "by_reason": {}, "rows": 0}, "shards_skipped": 16, "table": table}))
    cfg = th.tiny_config(tmp_path, f"data.annotations={tmp_path / 'ann'}")
    acc = data_accounting(cfg, {"samples_seen": 40, "step": 5, "epoch": 1, "skipped_nonfinite": 1})
    assert acc["train"] == {"samples_seen": 40, "steps": 5, "epochs_completed": 1, "skipped_nonfinite_steps": 1}
    assert acc["curation"] == table
    flat = flat_accounting(acc)
    assert flat["data/curation/by_decision/kept"] == 9 and flat["data/train/skipped_nonfinite_steps"] == 1
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())


def test_progress_printer_shows_step_losses_pace_and_time_left():
    from instraction.train.callbacks import ProgressPrinter

    lines: list[str] = []
    printer = ProgressPrinter(max_steps=100, echo=lines.append)
    printer.after_report(None, [], None)  # nothing reported: nothing printed
    printer.after_report(None, [{"loss": 1.0}], None)  # no step: nothing printed
    assert lines == []
    first = printer.line({"step": 25, "loss": 3.0, "contrastive_loss": 1.25}, now=10.0)
    assert "step 25/100" in first and "loss 3.000" in first and "contrastive 1.250" in first and "s/step" not in first
    later = printer.line({"step": 75, "loss": 2.0}, now=35.0)  # 50 steps in 25 s
    assert "0.50 s/step" in later and "~0.2 min left" in later  # 25 steps x 0.5 s
    printer.after_report(None, [{"step": 80, "loss": 1.5}, {"step": 80, "loss": 9.9}], None)
    assert len(lines) == 1 and "loss 1.500" in lines[0]  # rank 0's metrics


def test_progress_lines_go_through_a_file_the_driver_follows(tmp_path):
    import threading

    from instraction.train.callbacks import ProgressPrinter, file_size, follow

    path = str(tmp_path / "progress.log")
    with open(path, "w") as f:
        f.write("    train: step 3/10 | from an earlier attempt\n")  # a resumed run: not echoed again
    printer = ProgressPrinter(max_steps=10, path=path)
    seen: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(path, stop, seen.append, 0.01, file_size(path)))
    thread.start()
    printer.after_report(None, [{"step": 5, "loss": 1.0}], None)
    printer.after_report(None, [{"step": 10, "loss": 0.5}], None)
    with open(path, "a") as f:
        f.write("half a li")  # an unfinished line is not echoed
    stop.set()
    thread.join(timeout=5)
    assert [line.split(" | ")[0].strip() for line in seen] == ["train: step 5/10", "train: step 10/10"]


def test_relative_sqlite_tracking_uri_resolves_against_the_working_directory(tmp_path, monkeypatch):
    """MLflow's usual local form, sqlite:///mlflow.db, is relative: the artifact root beside it must be absolute."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")
    cfg = th.tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert tracking.open_run(cfg, str(run_dir))
    assert (tmp_path / "rel.db").exists()
    assert tracking._artifact_location("sqlite:///rel.db") == (tmp_path / "mlartifacts").as_uri()
    uri = "postgresql+psycopg2://me:s3cret@db:5432/mlflow"
    assert redact(uri) == "postgresql+psycopg2://***@db:5432/mlflow"


def test_gpu_workers_run_without_cublaslt_addmm_unless_told(monkeypatch, tmp_path):
    from instraction.train.launch import worker_environment

    cpu = th.tiny_config(tmp_path, "train.fixed_malloc_thresholds=false").train
    assert worker_environment(cpu) == {"DS_ACCELERATOR": "cpu"}
    gpu = dataclasses.replace(cpu, use_gpu=True)
    monkeypatch.delenv("DISABLE_ADDMM_CUDA_LT", raising=False)
    assert worker_environment(gpu) == {"DS_ACCELERATOR": "cuda", "DISABLE_ADDMM_CUDA_LT": "1"}
    monkeypatch.setenv("DISABLE_ADDMM_CUDA_LT", "0")  # the driver's choice reaches the workers
    assert worker_environment(gpu)["DISABLE_ADDMM_CUDA_LT"] == "0"


def test_workers_get_fixed_malloc_thresholds_unless_told(monkeypatch, tmp_path):
    from instraction.train.launch import worker_environment

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    train = th.tiny_config(tmp_path).train  # on by default
    assert worker_environment(train) == {"DS_ACCELERATOR": "cpu", "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                                         "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")  # the driver's value wins
    assert worker_environment(train)["MALLOC_TRIM_THRESHOLD_"] == "0"
    assert "MALLOC_MMAP_THRESHOLD_" not in worker_environment(dataclasses.replace(train, fixed_malloc_thresholds=False))


def test_phase_times_are_per_step_means_and_per_call_for_checkpoints():
    from instraction.train.loop import PhaseTimes

    phases = PhaseTimes()
    for _ in range(4):
        phases.add("forward", 0.010)
        with phases("backward"):
            pass
        phases.add("step", 0.020)
    phases.add("checkpoint", 0.5)
    means = phases.means_ms()
    assert means["phase_forward_ms"] == pytest.approx(10.0) and means["phase_checkpoint_ms"] == pytest.approx(500.0)
    assert 0 <= means["phase_backward_ms"] < 5
    assert PhaseTimes.from_metrics({**means, "loss": 1.0, "phase_note": 3}) == {
        k[len("phase_"):-len("_ms")]: v for k, v in means.items()}


def test_cpu_workers_run_as_many_torch_threads_as_cpus_they_reserved():
    from instraction.train.loop import worker_threads

    assert [worker_threads(c) for c in (0.25, 0.5, 1.0, 1.5, 2.0, 8.0)] == [1, 1, 1, 2, 2, 8]


@pytest.mark.parametrize("amx,avx512_bf16,expected", [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"),
                                                     (False, False, "fp32")])
def test_auto_precision_is_bf16_mixed_only_where_the_cpu_has_bf16_units(tmp_path, monkeypatch, amx, avx512_bf16,
                                                                        expected):
    """precision=auto: bf16 autocast where the CPU computes bf16 natively (AMX or AVX512-BF16), fp32 where oneDNN
    would emulate it; an explicit precision is kept as given; DeepSpeed's config is only built for a concrete one,
    and on CPU its autocast reduces every gradient in fp32 (no lower-precision communication)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    auto = th.tiny_config(tmp_path, "train.precision=auto").train
    assert engine.resolve_precision(auto).precision == expected
    assert engine.resolve_precision(auto, native=not (amx or avx512_bf16)).precision != expected  # as told
    assert engine.resolve_precision(th.tiny_config(tmp_path, "train.precision=fp32").train).precision == "fp32"
    with pytest.raises(ValueError, match="resolve"):
        deepspeed_config(auto)
    ds = deepspeed_config(engine.resolve_precision(auto))
    autocast = ds.get("torch_autocast", {})
    assert autocast.get("enabled", False) == (expected == "bf16-mixed")
    if autocast.get("enabled"):
        assert autocast["lower_precision_safe_modules"] == []


@pytest.mark.parametrize("natives,expected", [([True, True], "bf16-mixed"), ([True, False], "fp32")])
def test_ranks_agree_on_auto_precision(tmp_path, natives, expected):
    """Two gloo ranks, one of them on a CPU without bf16 units: both train in fp32 (ranks in different precisions
    would bucket gradients differently and hang at mismatched collectives); both bf16-capable: both autocast."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(th.precision_on_ranks, args=(natives, port, str(tmp_path)), nprocs=2)
    assert [(tmp_path / str(rank)).read_text() for rank in range(2)] == [expected, expected]


@pytest.mark.parametrize("precision,native", [("fp32", True), ("bf16-mixed", False), ("auto", True),
                                              ("auto", False)])
def test_plain_training_autocasts_the_forward_for_bf16_mixed(monkeypatch, precision, native):
    """The single-process update of the learn and train benchmarks trains as the workers do: under bf16-mixed
    (asked for, or ``auto`` on a CPU with bf16 units) its forward runs in bf16 autocast while the weights stay
    fp32 and learn."""
    from instraction.config import load_config
    from instraction.model.testing import make_dummy_batch

    monkeypatch.setattr(engine, "native_bf16", lambda use_gpu: native)
    bf16 = precision == "bf16-mixed" or (precision == "auto" and native)
    cfg = load_config(None, [f"train.precision={precision}"])
    model, step = engine.plain_training(cfg, total_steps=5)
    seen = []
    layer = next(m for m in model.video.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)))
    layer.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    before = layer.weight.detach().clone()
    out = step(make_dummy_batch(cfg, model.text.token_embedding.num_embeddings, 4))
    assert seen == [torch.bfloat16 if bf16 else torch.float32]
    assert torch.isfinite(out["loss"]) and layer.weight.dtype == torch.float32
    assert not torch.equal(layer.weight.detach(), before)
