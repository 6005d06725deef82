"""Ray Train V2 controller callbacks (``ray.train.UserCallback``; they run in the controller, on the driver's node)."""

from __future__ import annotations

import logging
import time

from ray.train import UserCallback

log = logging.getLogger(__name__)


class FailureLogger(UserCallback):
    """Makes worker failures visible in MLflow: metric ``worker_failures`` (a count, logged at each failure) and
    tag ``last_worker_failure`` (rank and error, URIs stripped of credentials). Ray Train then restarts the
    worker group from the latest checkpoint while ``FailureConfig.max_failures`` allows."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.failures = 0

    def after_exception(self, run_context, worker_exceptions) -> None:
        from mlflow import MlflowClient

        from instraction.train.tracking import redact

        self.failures += 1
        first_rank = min(worker_exceptions)
        message = redact("error", f"rank {first_rank}: {worker_exceptions[first_rank]!r}")[:500]
        try:
            client = MlflowClient(tracking_uri=self.tracking_uri)
            client.log_metric(self.run_id, "worker_failures", self.failures, timestamp=int(time.time() * 1000))
            client.set_tag(self.run_id, "last_worker_failure", message)
        except Exception as err:  # tracking must not change how Ray Train handles the failure
            log.error("could not log the worker failure to MLflow: %s", err)
