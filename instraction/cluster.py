"""Cluster start-up: the one place a job connects to Ray.

    from instraction.cluster import init_ray
    init_ray(cfg)        # in a job's main(), after the config is loaded

The library never starts Ray (docs/ARCHITECTURE.md); this helper is the exception the jobs call, so every entry
point starts Ray by the same rules: nothing when Ray is already up (a test session, a notebook), the cluster named
by RAY_ADDRESS (or the one ``ray job submit`` runs the job on), else a local instance sized for the run.
"""

from __future__ import annotations

import math
import os

# Ray Train V2's report() waits for the controller's next poll (Ray's default: every 2 s). The controller reads it
# from the driver's environment; cluster/runtime_env.yaml and the cluster configs set the same value.
REPORT_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def set_report_poll_env() -> None:
    """Put REPORT_POLL_ENV into this process's environment where unset (a value set by the user wins)."""
    for key, value in REPORT_POLL_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(cfg=None, log_to_driver: bool = False) -> None:
    """``ray.init`` unless Ray is already initialised. With ``cfg`` a local instance gets at least the logical CPUs
    the run reserves (:func:`instraction.train.launch.cpus_needed`); without it, one per core."""
    import ray

    set_report_poll_env()
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)  # the cluster we were submitted to / pointed at
        return
    num_cpus = os.cpu_count() or 2
    if cfg is not None:
        # Training workers, decode actors and shard readers each reserve logical CPUs; on a small machine they
        # must fit side by side (the OS shares the cores) or the workers would wait forever for data.
        from instraction.train.launch import cpus_needed

        num_cpus = max(num_cpus, math.ceil(cpus_needed(cfg, side_by_side=True)))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
             runtime_env={"env_vars": dict(REPORT_POLL_ENV)})
