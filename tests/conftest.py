"""Shared fixtures. Run everything with `python -m pytest`; only the fast unit tests with `-m "not integration"`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from instraction.cluster import set_report_poll_env

# Triton kernels run in the interpreter on this CPU-only machine; must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
set_report_poll_env()
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Jobs import the installed package (no sys.path edits); the jobs these tests start as subprocesses must import this
# checkout's instraction even where another copy is installed.
_CHECKOUT = str(Path(__file__).resolve().parents[1])
_PATHS = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
os.environ["PYTHONPATH"] = os.pathsep.join([_CHECKOUT, *_PATHS])


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 cores: keep num_cpus small)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    # left running for the other tests; Ray shuts down at interpreter exit


@pytest.fixture(scope="session")
def tiny_config():
    from instraction.config import load_config

    return load_config(None, [])
