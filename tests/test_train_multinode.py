"""Multi-node on one machine: a 2-node Ray cluster (ray.cluster_utils.Cluster) trains with one worker per node,
checkpoints on shared S3-compatible storage (a moto server); one node is removed mid-run and the run recovers
from its last checkpoint once a node is added back.

    python -m pytest tests/test_train_multinode.py -q          # runs the scenario below in a fresh process
    python tests/test_train_multinode.py /tmp/somewhere        # the scenario alone, prints its JSON result

The scenario needs its own Ray cluster, which cannot coexist with the session's `ray.init(address="local")`
in one process, hence the subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STEPS, EVERY = 16, 4


def test_two_node_run_survives_losing_a_node(tmp_path):
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "RAY_ADDRESS": ""})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["steps"] == STEPS
    first, second = out["groups"][0], out["groups"][-1]
    assert len(set(first)) == 2 and len(set(second)) == 2  # one worker per node, before and after the loss
    assert out["removed_node"] in first and out["removed_node"] not in second
    assert out["worker_failures"] >= 1
    assert out["checkpoint"] == f"checkpoints/runs/run/checkpoint_{STEPS:08d}"  # on S3, not on a node's disk
    assert f"checkpoint_{STEPS:08d}" in out["stored"] and Path(out["weights"]).exists()
    # resumed from a checkpoint, not from scratch: the last attempt began at checkpoint c >= EVERY (the node went
    # only after Ray Train had registered checkpoint EVERY), and only steps after c were logged twice. A checkpoint
    # that every rank uploaded is still lost when the node goes before the controller collects its report (a CI run
    # redid 5 steps at checkpoints every 4), so the bound is one lost checkpoint, not one interval.
    resumed_from, steps = out["start_step"], out["loss_steps"]
    assert resumed_from >= EVERY and resumed_from % EVERY == 0, resumed_from
    assert sorted(set(steps)) == list(range(1, STEPS + 1))  # every step logged: rank 0 flushes before a checkpoint
    repeated = sorted(s for s, n in Counter(steps).items() if n > 1)
    assert repeated == list(range(resumed_from + 1, resumed_from + 1 + len(repeated))), (resumed_from, repeated)
    assert len(repeated) < 2 * EVERY, repeated


# ------------------------------------------------------------------------------------------------ the scenario
def _slow_builder(cfg, vocab_size):
    """The toy model, slowed to ~0.25 s a step so the node can be removed mid-run; records where it was built."""
    import ray
    import train_helpers as th

    class Slow(th.ToyModel):
        def forward(self, batch):
            time.sleep(0.25)
            return super().forward(batch)

    marker = Path(os.environ["MULTINODE_DIR"]) / "builds"
    marker.mkdir(exist_ok=True)
    (marker / f"{time.time():.6f}-{os.getpid()}").write_text(ray.get_runtime_context().get_node_id())
    return Slow(cfg, vocab_size)


def scenario(tmp: Path) -> dict:
    import ray
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    sys.path.insert(0, str(Path(__file__).parent))
    import train_helpers as th

    from instraction.cluster import set_report_poll_env
    from instraction.train.launch import run_training
    from instraction.tracking import tracking_uri

    cloudpickle.register_pickle_by_value(th)
    os.environ["MULTINODE_DIR"] = str(tmp)
    set_report_poll_env()
    # Shared checkpoint storage: S3 on a moto server. The credentials are in the environment the nodes inherit
    # (as an instance profile would provide them), never in the config.
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="AKIAMULTINODE", AWS_SECRET_ACCESS_KEY="multinode-secret",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://{host}:{port}")
    from instraction.storage import open_filesystem

    s3, _ = open_filesystem("s3://checkpoints")
    s3.mkdir("checkpoints")
    # head: no CPU (driver, controller, Ray Data coordinator); two 1-CPU nodes hold one training worker each
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"MULTINODE_DIR": str(tmp), "DS_ACCELERATOR": "cpu"}})
    try:
        cluster.wait_for_nodes()
        cfg = th.tiny_config(tmp, f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}",
                             "train.report_every=4", "train.max_failures=3", "train.cpus_per_worker=1",
                             "train.storage_path=s3://checkpoints/runs")
        run_dir = tmp / "run"
        outcome: dict = {}

        def train():  # in a thread: Cluster.add_node/remove_node need the main thread
            try:
                outcome["result"] = run_training(cfg, str(run_dir), {"train": th.toy_dataset(64)},
                                                 model_builder=_slow_builder, collate=th.toy_collate)
            except BaseException as err:  # reported by the main thread
                outcome["error"] = err

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        # wait until Ray Train has registered checkpoint EVERY: the ProgressPrinter's line for that report is
        # written by the controller when it collects the report (a checkpoint present on S3 may not be registered)
        progress = run_dir / "progress.log"
        while trainer.is_alive() and not (progress.exists() and f"step {EVERY}/{STEPS}" in progress.read_text()):
            time.sleep(0.1)
        time.sleep(0.5)  # mid-interval: a couple of steps past the checkpoint
        victim = nodes[1]
        cluster.remove_node(victim, allow_graceful=False)
        time.sleep(3)  # the run cannot restart on one node: it waits for capacity
        cluster.add_node(num_cpus=1)
        trainer.join(timeout=300)
        if "error" in outcome or "result" not in outcome:
            raise RuntimeError(f"training did not complete: {outcome.get('error')!r}")
        result = outcome["result"]
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri(cfg))
        run = client.get_run(result["mlflow_run_id"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        builds = sorted((tmp / "builds").iterdir())
        groups = [[b.read_text() for b in builds[i:i + 2]] for i in range(0, len(builds), 2)]
        return {"steps": result["steps"], "groups": groups, "removed_node": victim.node_id,
                "checkpoint": result["checkpoint"], "weights": result["weights"],
                "stored": sorted(p.rsplit("/", 1)[-1] for p in s3.ls("checkpoints/runs/run")),
                "worker_failures": run.data.metrics.get("worker_failures", 0),
                "loss_steps": steps, "start_step": result["metrics"]["start_step"]}
    finally:
        ray.shutdown()
        cluster.shutdown()
        moto.stop()


if __name__ == "__main__":
    print("RESULT " + json.dumps(scenario(Path(sys.argv[1]))), flush=True)
