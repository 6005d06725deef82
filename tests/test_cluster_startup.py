"""Cluster start-up has one home (instraction/cluster.py): one report-poll value everywhere, jobs import the
installed package (no sys.path edits), and init_ray starts Ray only when it is not up.

    python -m pytest tests/test_cluster_startup.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from instraction import cluster

ROOT = Path(__file__).resolve().parents[1]
POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def test_every_place_that_sets_the_report_poll_uses_one_value():
    files = [*ROOT.glob("cluster/**/*.yaml"), *ROOT.glob("jobs/*"), *ROOT.glob("instraction/**/*.py"),
             *ROOT.glob("tests/*.py")]
    values = {}
    for path in files:
        # KEY=0.1, KEY: "0.1", "KEY": "0.1", {name: KEY, value: "0.1"}; not prose such as "KEY: 2 s by default"
        for value in re.findall(POLL + r"""["']?\s*(?:[=:]|, value:)\s*["']?([0-9.]+)(?![0-9.]*\s*s\b)""",
                                path.read_text()):
            values.setdefault(value, []).append(str(path.relative_to(ROOT)))
    assert set(values) == {cluster.REPORT_POLL_ENV[POLL]}, values


def test_jobs_import_the_installed_package():
    edits = [p.name for p in ROOT.glob("jobs/*.py") if "sys.path" in p.read_text()]
    assert edits == []


class _FakeRay:
    def __init__(self, up: bool):
        self.up, self.calls = up, []

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        self.calls.append(kwargs)
        self.up = True

    def shutdown(self):
        self.calls.append("shutdown")
        self.up = False


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    def make(up: bool) -> _FakeRay:
        fake = _FakeRay(up)
        monkeypatch.setattr(ray, "is_initialized", fake.is_initialized)
        monkeypatch.setattr(ray, "init", fake.init)
        monkeypatch.setattr(ray, "shutdown", fake.shutdown)
        return fake

    return make


def test_init_ray_leaves_a_running_ray_alone(fake_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = fake_ray(True)
    cluster.init_ray(None)
    assert fake.calls == []


def test_init_ray_joins_the_cluster_named_by_ray_address(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    fake = fake_ray(False)
    cluster.init_ray(None)
    assert fake.calls == [{"log_to_driver": True}]  # ray.init reads the address from the environment


def test_init_ray_sizes_a_local_instance_for_the_run(fake_ray, monkeypatch, tiny_config):
    from instraction.train.launch import cpus_needed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = fake_ray(False)
    cluster.init_ray(tiny_config)
    (call,) = fake.calls
    assert call["address"] == "local" and call["num_cpus"] >= cpus_needed(tiny_config, side_by_side=True)
    assert call["runtime_env"]["env_vars"] == cluster.REPORT_POLL_ENV


def test_ray_session_shuts_down_only_the_instance_it_started(fake_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = fake_ray(False)
    with pytest.raises(RuntimeError), cluster.ray_session(num_cpus=3):
        assert fake.up and fake.calls[0]["num_cpus"] == 3
        raise RuntimeError("a failing benchmark still shuts its own Ray down")
    assert fake.calls[-1] == "shutdown" and not fake.up
    running = fake_ray(True)
    with cluster.ray_session(num_cpus=3):
        pass
    assert running.calls == [] and running.up


def test_library_benchmarks_start_ray_through_the_cluster_module():
    direct = [str(p.relative_to(ROOT)) for p in (ROOT / "instraction").rglob("*.py")
              if p.name != "cluster.py" and re.search(r"^\s*ray\.init\(", p.read_text(), re.MULTILINE)]
    assert direct == []


def test_ray_job_submit_uploads_the_whole_package():
    """The runtime env's excludes are gitignore patterns (Ray matches them with its vendored pathspec): an unanchored
    "data/" dropped instraction/data/ from the upload, so the job ran whatever copy of it was installed."""
    import yaml
    from ray._private.thirdparty.pathspec import PathSpec

    excludes = yaml.safe_load((ROOT / "cluster/runtime_env.yaml").read_text())["excludes"]
    spec = PathSpec.from_lines("gitwildmatch", excludes)
    package = [str(p.relative_to(ROOT)) for p in (ROOT / "instraction").rglob("*.py")]
    assert not [p for p in package if spec.match_file(p)]
    assert spec.match_file("data/synthkitchen/shards/00000.tar") and spec.match_file("runs/x/config.yaml")
