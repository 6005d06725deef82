"""Cluster start-up: the one place a job connects to Ray.

    from instraction.cluster import init_ray
    init_ray(cfg)        # in a job's main(), after the config is loaded

The library never starts Ray (docs/ARCHITECTURE.md); this helper is the exception the jobs (and, through
``ray_session``, the benchmarks) call, so every entry point starts Ray by the same rules: nothing when Ray is
already up (a test session, a notebook), the cluster named by RAY_ADDRESS (or the one ``ray job submit`` runs the
job on), else a local instance sized for the run.
"""

from __future__ import annotations

import contextlib
import math
import os

# How often Ray Train V2's controller polls every worker (Ray's default: 2 s). A worker's report() hands its result
# to a queue of one that the poll empties, so a report waits only while the previous one is still unread: reports
# at least a poll apart (train.report_every steps) never wait. Each poll runs Python in the worker beside its
# training thread: at 0.1 s the embedded default's steps were ~4-8% slower than at 1 s (README, session 12). The
# controller reads it from the driver's environment; cluster/runtime_env.yaml and the cluster configs set the same.
REPORT_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.0"}


def set_report_poll_env() -> None:
    """Put REPORT_POLL_ENV into this process's environment where unset (a value set by the user wins)."""
    for key, value in REPORT_POLL_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(cfg=None, log_to_driver: bool = False, num_cpus: int | None = None) -> bool:
    """``ray.init`` unless Ray is already initialised; True when this call started it. With ``cfg`` a local
    instance gets at least the logical CPUs the run reserves (:func:`instraction.train.launch.cpus_needed`); else
    ``num_cpus``, or one per core."""
    import ray

    set_report_poll_env()
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)  # the cluster we were submitted to / pointed at
        return True
    num_cpus = num_cpus or os.cpu_count() or 2
    if cfg is not None:
        # Training workers, decode actors and shard readers each reserve logical CPUs; on a small machine they
        # must fit side by side (the OS shares the cores) or the workers would wait forever for data.
        from instraction.train.launch import cpus_needed

        num_cpus = max(num_cpus, math.ceil(cpus_needed(cfg, side_by_side=True)))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
             runtime_env={"env_vars": dict(REPORT_POLL_ENV)})
    return True


@contextlib.contextmanager
def ray_session(cfg=None, log_to_driver: bool = False, num_cpus: int | None = None):
    """:func:`init_ray` for the length of a ``with`` block: a benchmark or script that found no Ray shuts down
    the instance it started on the way out, and leaves a running one (a test session's) alone."""
    import ray

    started = init_ray(cfg, log_to_driver=log_to_driver, num_cpus=num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
