"""MLflow tracking for every component: one MLflow run per training run (or bench evaluation directory), created
by the driver, written to by rank 0.

    driver  open_run(cfg, run_dir)     -> run id (reused from <run_dir>/mlflow_run_id after a restart);
                                          logs the resolved config as flattened params and as config.yaml
    rank 0  MetricLogger(uri, run_id)  -> every step's metrics, batched, from a background thread
    driver  log_artifacts / finish_run -> final weights (safetensors), bench results, data accounting
    any     log_batch(client, run_id, metrics, tags) -> MLflow's per-call limits, in one place
            flatten_metrics(tree, prefix)            -> {"prefix/a/b": float}: the one nested-dict -> metrics flattener

The store is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.tracking_uri``, else a local SQLite file
``<run.dir>/mlflow.db`` (MLflow's ./mlruns file store is in maintenance mode) with artifacts beside it. No
credential is ever logged: URIs lose their user:password part and values of secret-looking keys are masked.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from instraction.config import Config, flatten, to_yaml
from instraction.storage import is_remote, open_filesystem, redact, resolve

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
_PARAM_MAX = 6000  # MLflow's limit on a param value
_TAG_MAX = 5000  # MLflow's limit on a tag value
_METRICS_PER_BATCH = 1000  # MLflow's limits per log_batch call
_PARAMS_PER_BATCH = 100


def tracking_uri(cfg: Config) -> str:
    """``MLFLOW_TRACKING_URI`` > ``tracking.tracking_uri`` > ``sqlite:///<abs run.dir>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.tracking_uri
    if uri:
        return uri
    db = Path(resolve(cfg.run.dir) if not is_remote(cfg.run.dir) else ".").resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def config_params(cfg: Config) -> dict[str, str]:
    """The resolved config as flat MLflow params, credentials removed, values cut to MLflow's limit."""
    return {k: str(redact(v, k))[:_PARAM_MAX] for k, v in flatten(cfg).items()}


def _artifact_location(uri: str) -> str | None:
    """Artifacts of the local SQLite default live beside the database (never relative to a worker's cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()  # relative: from the cwd
    return None


def metric_name(*parts: str) -> str:
    """An MLflow-safe metric name: "R@1" -> "R_at_1", "&" -> "and", any other character MLflow refuses -> "_"."""
    name = "/".join(parts).replace("@", "_at_").replace("&", "and")
    return re.sub(r"[^/\w.\- :]", "_", name)


def flatten_metrics(tree: Mapping, prefix: str, skip: Iterable[str] = ()) -> dict[str, float]:
    """Every finite, non-bool number of a nested mapping as ``{"prefix/key/subkey": float}`` (names made MLflow-safe
    by :func:`metric_name`; keys in ``skip`` left out at any depth; lists and strings ignored)."""
    skip = set(skip)
    out: dict[str, float] = {}

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key not in skip:
                    walk(value, path + [str(key)])
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            out[metric_name(*path)] = float(node)

    walk(tree, [prefix])
    return out


def metrics_at(values: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None) -> list:
    """MLflow ``Metric`` entities of ``{name: number}`` (non-numbers left out), all at one step and time."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return [Metric(k, float(v), now, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def log_batch(client, run_id: str, metrics: Sequence = (), tags: Mapping[str, Any] | None = None) -> None:
    """``metrics`` (MLflow ``Metric`` entities) and ``tags`` in as few ``log_batch`` calls as MLflow's per-call
    limits allow; tag values redacted and cut to MLflow's limit. One call even when both are empty."""
    from mlflow.entities import RunTag

    run_tags = [RunTag(k, str(redact(v, k))[:_TAG_MAX]) for k, v in (tags or {}).items()]
    for i in range(0, max(len(metrics), 1), _METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(metrics[i:i + _METRICS_PER_BATCH]), tags=run_tags if i == 0 else [])


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _read_run_id(run_dir: str, s3) -> str | None:
    fs, path = open_filesystem(f"{run_dir.rstrip('/')}/{RUN_ID_FILE}", s3)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return f.read().strip() or None


def _write_run_id(run_dir: str, run_id: str, s3) -> None:
    fs, path = open_filesystem(f"{run_dir.rstrip('/')}/{RUN_ID_FILE}", s3)
    with fs.open(path, "w") as f:
        f.write(run_id)


def open_run(cfg: Config, run_dir: str) -> str:
    """Create the MLflow run of ``run_dir`` (or reopen the one recorded there) and log the config; driver only.

    On a reopened run the params already logged stay (MLflow params are immutable); a value that changed since
    is recorded as the tag ``resumed_with.<key>``.
    """
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    client = _client(uri)
    run_id = _read_run_id(run_dir, cfg.data.s3)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow run %s recorded in %s is not in %s; starting a new one", run_id, run_dir,
                        redact(uri))
            run_id = None
    if run_id is None:
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            cfg.tracking.experiment, artifact_location=_artifact_location(uri))
        run = client.create_run(exp_id, run_name=Path(run_dir.rstrip("/")).name,
                                tags={"run_dir": redact(run_dir, "run_dir"), "seed": str(cfg.run.seed)})
        run_id = run.info.run_id
        _write_run_id(run_dir, run_id, cfg.data.s3)
    else:
        client.update_run(run_id, status="RUNNING")
    existing = dict(run.data.params)
    params = config_params(cfg)
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    changed = [RunTag(f"resumed_with.{k}", v) for k, v in params.items() if k in existing and existing[k] != v]
    for i in range(0, max(len(new), len(changed)), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[i:i + _PARAMS_PER_BATCH], tags=changed[i:i + _PARAMS_PER_BATCH])
    client.log_text(run_id, to_yaml(cfg), "config.yaml")
    return run_id


def log_artifacts(cfg: Config, run_id: str, paths: list[str], artifact_path: str | None = None) -> None:
    """Attach local files (weights, bench results, plots) to the run."""
    client = _client(tracking_uri(cfg))
    for p in paths:
        client.log_artifact(run_id, p, artifact_path=artifact_path)


def log_metrics(cfg: Config, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log summary numbers (data accounting, bench results) from the driver."""
    items = metrics_at(metrics, step)
    if items:
        log_batch(_client(tracking_uri(cfg)), run_id, items)


def finish_run(cfg: Config, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri(cfg)).set_terminated(run_id, status=status)


class MetricLogger:
    """Rank 0's per-step metric sink: ``log`` queues, a daemon thread writes batches, ``flush`` writes what is
    queued now (before a checkpoint is reported: a run resumed from that checkpoint never redoes those steps, so
    steps queued but unwritten when a node dies would be missing from the curve), ``close`` flushes and stops.

    Between checkpoints the training step never waits on the tracking store (a SQLite commit or an HTTP round trip).
    """

    def __init__(self, uri: str, run_id: str, flush_every_s: float = 1.0):
        self.run_id = run_id
        self._client = _client(uri)
        self._queue: queue.Queue = queue.Queue()
        self._flush_every_s = flush_every_s
        self._stop = threading.Event()
        self._error: Exception | None = None
        self._lock = threading.Lock()  # one writer at a time: the thread's batches and flush() keep step order
        self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            self._queue.put(Metric(k, float(v), now, step))

    def flush(self) -> None:
        """Write every metric queued so far, in the calling thread (errors are reported, never raised)."""
        with self._lock:
            batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            try:
                log_batch(self._client, self.run_id, batch)
            except Exception as err:  # tracking must never kill training; report once
                if self._error is None:
                    log.error("MLflow logging failed (metrics dropped): %s", err)
                self._error = err

    def _run(self) -> None:
        while not self._stop.wait(self._flush_every_s):
            self.flush()
        self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
