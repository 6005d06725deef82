"""`ray start --head` then `ray job submit -- python jobs/pretrain.py ...` on that cluster completes, and the run
it leaves behind is complete (summary, weights, MLflow run).

    python -m pytest tests/test_train_job_submit.py -q

The head runs on free ports with its own temp dir, so it never meets another Ray instance on this machine, and
it is stopped by killing exactly the processes started under that temp dir (`ray stop` would stop every Ray
instance of the user). Token auth is on by default in Ray 2.60: the CLI needs RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import train_helpers as th

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
PORT_FLAGS = ["--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port"]
WORKER_PORTS = 200


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _stop_instance(temp_dir: str) -> None:
    """Terminate the processes of the Ray instance rooted at ``temp_dir`` (and their children), nothing else."""
    import psutil

    own = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid not in own and any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                roots.append(proc)
        except psutil.Error:
            continue
    procs = {p.pid: p for p in roots}
    for root in roots:
        try:
            procs.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.Error:
            continue
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=5)
    for proc in alive:
        proc.kill()


@pytest.fixture()
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ports = _free_ports(len(PORT_FLAGS))
    # the worker port range must not hold any of the other ports (`ray start` refuses the overlap)
    workers = next(w for w in iter(lambda: _free_ports(1)[0], None)
                   if not any(w <= port <= w + WORKER_PORTS for port in ports) and w + WORKER_PORTS < 65536)
    cmd = ["ray", "start", "--head", "--num-cpus", "2", "--temp-dir", temp_dir, "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--disable-usage-stats",
           "--min-worker-port", str(workers), "--max-worker-port", str(workers + WORKER_PORTS)]
    for flag, port in zip(PORT_FLAGS, ports):
        cmd += [flag, str(port)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        started = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert started.returncode == 0, f"ray start failed: {started.stdout[-2000:]}{started.stderr[-2000:]}"
        yield f"http://127.0.0.1:{ports[PORT_FLAGS.index('--dashboard-port')]}"
    finally:
        _stop_instance(temp_dir)


def test_ray_job_submit_runs_pretrain_to_completion(ray_head, tmp_path):
    overrides = [*th.TINY_OVERRIDES, "train.max_steps=6", "train.checkpoint_every=3", "run.evaluate=false",
                 "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5", "run.name=submitted",
                 f"run.dir={tmp_path}/runs", f"data.shards={tmp_path}/shards", f"data.annotations={tmp_path}/ann",
                 "data.make_synthetic=true",
                 *th.TINY_DATA]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")},
           "RAY_AUTH_MODE": "token"}
    cmd = ["ray", "job", "submit", "--address", ray_head, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--",
           sys.executable, "jobs/pretrain.py", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout + proc.stderr

    (run_dir,) = (tmp_path / "runs").glob("submitted-*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and (run_dir / "model.safetensors").exists()
    assert (run_dir / "checkpoint_00000006").is_dir()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "loss")) == 6
