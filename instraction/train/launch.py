"""TorchTrainer assembly from the run config, and ``run_training``: the one call jobs/pretrain.py makes.

    result = run_training(cfg, run_dir, {"train": dataset})
    result["steps"], result["checkpoint"], result["mlflow_run_id"], result["metrics"], result["data_accounting"]

Ray Train V2 (the default in Ray >= 2.50): a run is identified by ``RunConfig(storage_path, name)``; fitting a
trainer with the storage path and name of an earlier run resumes it from its latest checkpoint. Here the name
is the run directory's name and the storage path ``train.storage_path`` (default: the run directory's parent,
so checkpoints land in the run directory), and re-running a run directory resumes it. Callbacks must be
``ray.train.UserCallback`` (Tune's MLflowLoggerCallback is rejected); per-step metrics go to MLflow from rank 0.

Importing this module has no side effect; ``run_training`` needs a connected Ray (the job calls ``ray.init``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from instraction import cluster, tracking
from instraction.config import Config, to_yaml
from instraction.storage import is_remote, open_filesystem, read_json_or_none, redact, resolve

log = logging.getLogger(__name__)



def storage(cfg: Config, run_dir: str) -> tuple[str, str]:
    """(Ray Train storage_path, run name): checkpoints land in ``<storage_path>/<name>/checkpoint_<step>``."""
    run_dir = resolve(run_dir).rstrip("/")
    name = run_dir.rsplit("/", 1)[-1]
    if cfg.train.storage_path:
        return resolve(cfg.train.storage_path), name
    return run_dir.rsplit("/", 1)[0], name


def storage_filesystem(cfg: Config, storage_path: str):
    """``(pyarrow filesystem or None, path for it)`` of the checkpoint storage.

    S3-compatible stores (MinIO, moto, R2) are reached like the data: s3fs with the endpoint of
    ``data.s3.endpoint_url`` / ``AWS_ENDPOINT_URL`` (wrapped for pyarrow, which Ray Train uses). AWS S3 itself and
    local paths are left to Ray. No credential is put into the filesystem object (it is shipped to the controller
    and workers): each process takes them from its own standard chain (instance profile, environment).
    """
    if not storage_path.startswith("s3://") or not (cfg.data.s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")):
        return None, storage_path
    import pyarrow.fs

    fs, path = open_filesystem(storage_path, cfg.data.s3)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


def loop_config(cfg: Config, run_dir: str, mlflow_run_id: str | None, model_builder: Callable | None = None,
                collate: Callable | None = None, after_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """What every worker receives: the resolved config as YAML (plain data), the run dir, the MLflow run, and the
    optional callables of :func:`run_training`."""
    return {
        "config_yaml": to_yaml(cfg),
        "run_dir": resolve(run_dir),
        "mlflow_uri": tracking.tracking_uri(cfg) if mlflow_run_id else None,
        "mlflow_run_id": mlflow_run_id,
        "model_builder": model_builder,
        "collate": collate,
        "after_step": after_step,
    }


def build_trainer(cfg: Config, run_dir: str, datasets: Mapping[str, Any], train_loop_config: dict[str, Any],
                  callbacks: list | None = None):
    """A ``TorchTrainer`` for ``cfg.train``: scaling, storage, failure and checkpoint policy, deterministic ingest."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from instraction.train.loop import train_loop_per_worker

    t = cfg.train
    storage_path, name = storage(cfg, run_dir)
    filesystem, storage_path = storage_filesystem(cfg, storage_path)
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    # Deterministic splits (see checkpoint.py): with preserve_order Ray Data hands blocks to the splits in order.
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    worker_env = worker_environment(t)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=train_loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.num_to_keep),
            callbacks=callbacks or [],
            worker_runtime_env={"env_vars": worker_env},
        ),
        datasets=dict(datasets),
        # No shard locality: it gives a block to a split on the block's node, an order a resumed run does not repeat.
        dataset_config=ray.train.DataConfig(execution_options=ingest, enable_shard_locality=False),
    )


# glibc malloc, fixed instead of adaptive thresholds (train.fixed_malloc_thresholds): allocations up to 32 MiB
# (the mmap threshold's maximum) come from the heap, and freed memory is returned to the OS only above 4 GiB.
FIXED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def worker_environment(train) -> dict[str, str]:
    """Environment of the training workers. On GPUs PyTorch's cuBLASLt addmm is off unless the driver's
    environment says otherwise: at the ViT's odd row count (B x 1569 tokens) it picked sm75 kernels that took
    ~40% of the step on an H200 (README, "Paper scale on a GPU"). With ``train.fixed_malloc_thresholds`` glibc's
    malloc thresholds are fixed (FIXED_MALLOC_ENV; a value in the driver's environment wins)."""
    env = {"DS_ACCELERATOR": "cuda" if train.use_gpu else "cpu"}
    if train.use_gpu:
        env["DISABLE_ADDMM_CUDA_LT"] = os.environ.get("DISABLE_ADDMM_CUDA_LT", "1")
    if train.fixed_malloc_thresholds:
        env.update({name: os.environ.get(name, value) for name, value in FIXED_MALLOC_ENV.items()})
    return env


def has_previous_run(cfg: Config, run_dir: str) -> bool:
    """Whether Ray Train storage already holds a run of this name (fit() would resume it)."""
    import pyarrow.fs

    storage_path, name = storage(cfg, run_dir)
    fs, root = storage_filesystem(cfg, storage_path)
    if fs is None:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    info = fs.get_file_info(f"{root.rstrip('/')}/{name}/checkpoint_manager_snapshot.json")
    return info.type != pyarrow.fs.FileType.NotFound


def run_training(cfg: Config, run_dir: str, datasets: Mapping[str, Any], *, model_builder: Callable | None = None,
                 collate: Callable | None = None, after_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir`` on ``datasets["train"]``; returns the run's outcome:

    - ``steps``: training steps done; ``checkpoint``: path/URI of the last checkpoint;
    - ``weights``: ``<run_dir>/model.safetensors`` (None with ``train.export_weights=false``);
    - ``mlflow_run_id`` (None when tracking is off); ``metrics``: rank 0's last reported metrics;
    - ``data_accounting``: ``train`` (samples, epochs, skipped steps) and ``curation`` (counts by decision and
      reason from ``<data.annotations>/summary.json``, when present).

    ``model_builder(cfg, vocab_size) -> nn.Module`` and ``collate(numpy rows) -> batch`` replace the defaults
    (``instraction.model.instraction.build_model``; ``instraction.data.examples.Collate`` seeded per rank, which
    applies ``data.augment``; a collate passed here is used as is, without augmentation). ``after_step(step)``
    runs on every rank after each step (the step's metrics logged, before its checkpoint), outside the timed step:
    the train benchmark holds the workers there while it times its single-process reference.
    """
    from instraction.train.callbacks import FailureLogger, ProgressPrinter, file_size, follow

    if "train" not in datasets:
        raise ValueError(f"datasets needs a 'train' dataset, got {sorted(datasets)}")
    run_dir = resolve(run_dir)
    cluster.set_report_poll_env()  # the controller reads it from the driver's environment when fit() starts it
    if not cfg.train.resume and has_previous_run(cfg, run_dir):
        raise FileExistsError(f"{run_dir} already holds a Ray Train run and train.resume=false: choose a new run "
                              "directory (or set train.resume=true to continue it)")
    if not is_remote(run_dir):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    warn_if_cluster_too_small(cfg)
    run_id = tracking.open_run(cfg, run_dir) if cfg.tracking.enabled else None
    progress = None if is_remote(run_dir) else f"{run_dir}/progress.log"
    callbacks = [ProgressPrinter(cfg.train.max_steps, path=progress)]
    if run_id:
        callbacks.append(FailureLogger(tracking.tracking_uri(cfg), run_id))
    trainer = build_trainer(cfg, run_dir, datasets,
                            loop_config(cfg, run_dir, run_id, model_builder, collate, after_step), callbacks)
    stop = threading.Event()
    follower = (threading.Thread(target=follow, args=(progress, stop), kwargs={"start": file_size(progress)},
                                 daemon=True) if progress else None)
    if follower:
        follower.start()
    try:
        result = trainer.fit()
    except BaseException as err:
        if run_id:
            tracking.finish_run(cfg, run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        stop.set()
        if follower:
            follower.join(timeout=5)
    metrics = dict(result.metrics or {})
    weights = _fetch_weights(result.checkpoint, run_dir, cfg.data.s3)
    accounting = data_accounting(cfg, metrics)
    if run_id:
        tracking.log_metrics(cfg, run_id, flat_accounting(accounting), step=int(metrics.get("step", 0)))
        if weights and not is_remote(weights):
            tracking.log_artifacts(cfg, run_id, [weights])
            if model_builder is None:  # the InstrAction model (a custom builder's weights would not load into it)
                _log_encoder(cfg, run_id, weights, Path(run_dir.rstrip("/")).name)
        tracking.finish_run(cfg, run_id)
    return {
        "steps": int(metrics.get("step", 0)),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "weights": weights,
        "mlflow_run_id": run_id,
        "metrics": metrics,
        "data_accounting": accounting,
    }


def _log_encoder(cfg: Config, run_id: str, weights: str, name: str) -> None:
    from instraction.encoder_model import log_encoder

    try:
        log_encoder(cfg, run_id, weights, name)
    except Exception as err:  # tracking must not fail a finished run; say why the model is missing
        log.warning("MLflow pyfunc model of %s not logged: %s", name, redact(f"{type(err).__name__}: {err}"))


def cpus_needed(cfg: Config, side_by_side: bool | None = None) -> float:
    """Logical CPUs the run reserves at its peak. Streaming (HowTo100M): training workers, decode actors and shard
    readers side by side. With ``data.materialize`` the read + decode run once, to completion, before the workers
    start, so only the larger of the two phases counts. ``side_by_side=True`` gives the sum either way
    (jobs/pretrain.py sizes its local Ray so: spare logical CPUs cost nothing there and leave room for Ray Data's
    own helpers). Materialised, the read tasks decode their shards themselves: no decode actor is started."""
    t, d = cfg.train, cfg.data
    train = t.num_workers * t.cpus_per_worker
    decode = d.read_num_cpus + (0 if d.materialize else d.decode_concurrency * d.decode_num_cpus)
    if side_by_side is None:
        side_by_side = not d.materialize
    return train + decode if side_by_side else max(train, decode)


def warn_if_cluster_too_small(cfg: Config) -> None:
    """If the cluster cannot hold what the run reserves (:func:`cpus_needed`) and no autoscaler adds nodes, the
    workers wait forever for data. Say so up front."""
    import ray

    total = ray.cluster_resources()
    t, d = cfg.train, cfg.data
    cpus = cpus_needed(cfg)
    if cpus > total.get("CPU", 0):
        log.warning("training (%d x %.2f CPU), decoding (%d x %.2f CPU) + reads (%.2f CPU) need %.2f CPUs (side by "
                    "side when streaming, the larger phase with data.materialize), the cluster has %.1f now: unless "
                    "the autoscaler adds nodes, lower train.cpus_per_worker / "
                    "data.decode_num_cpus", t.num_workers, t.cpus_per_worker, d.decode_concurrency, d.decode_num_cpus,
                    d.read_num_cpus, cpus, total.get("CPU", 0))
    if t.use_gpu and t.num_workers > total.get("GPU", 0):
        log.warning("train.use_gpu with %d workers, the cluster has %s GPUs now", t.num_workers, total.get("GPU", 0))


def _fetch_weights(checkpoint, run_dir: str, s3) -> str | None:
    """Copy the final checkpoint's model.safetensors (only that file, wherever the storage is) to the run dir."""
    import pyarrow.fs

    from instraction.train.checkpoint import WEIGHTS_FILE

    if checkpoint is None:
        return None
    source = f"{checkpoint.path.rstrip('/')}/{WEIGHTS_FILE}"
    if checkpoint.filesystem.get_file_info(source).type == pyarrow.fs.FileType.NotFound:
        return None
    target = f"{run_dir.rstrip('/')}/{WEIGHTS_FILE}"
    fs, path = open_filesystem(target, s3)
    with checkpoint.filesystem.open_input_stream(source) as src, fs.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, length=16 << 20)
    return target


def data_accounting(cfg: Config, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What the run consumed (from rank 0's last report) and, when curation wrote one, the annotation table's counts
    by decision and reason (``table`` of its summary: the whole table, also when this run curated nothing new)."""
    out: dict[str, Any] = {"train": {
        "samples_seen": int(metrics.get("samples_seen", 0)),
        "steps": int(metrics.get("step", 0)),
        "epochs_completed": int(metrics.get("epoch", 0)),
        "skipped_nonfinite_steps": int(metrics.get("skipped_nonfinite", 0)),
    }}
    summary = read_json_or_none(f"{cfg.data.annotations.rstrip('/')}/summary.json", cfg.data.s3)
    if summary is not None:
        out["curation"] = summary.get("table", summary)
    return out


def flat_accounting(accounting: Mapping[str, Any], prefix: str = "data") -> dict[str, float]:
    """Numeric leaves of the accounting as MLflow metric names (``data/train/samples_seen``, ...)."""
    return tracking.flatten_metrics(accounting, prefix)
