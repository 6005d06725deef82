"""Ray Train V2 controller callbacks (``ray.train.UserCallback``; they run in the controller, on the driver's node)."""

from __future__ import annotations

import logging
import os
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

        from instraction.storage import redact

        self.failures += 1
        first_rank = min(worker_exceptions)
        message = redact(f"rank {first_rank}: {worker_exceptions[first_rank]!r}")[:500]
        try:
            client = MlflowClient(tracking_uri=self.tracking_uri)
            client.log_metric(self.run_id, "worker_failures", self.failures, timestamp=int(time.time() * 1000))
            client.set_tag(self.run_id, "last_worker_failure", message)
        except Exception as err:  # tracking must not change how Ray Train handles the failure
            log.error("could not log the worker failure to MLflow: %s", err)


class ProgressPrinter(UserCallback):
    """One line per ``ray.train.report`` (every ``train.report_every`` steps and at checkpoints), from rank 0's
    metrics: step / max_steps, the loss terms, seconds per step and the time left at that pace.

    The callback runs in Ray Train's controller actor, whose stdout reaches the driver only with
    ``log_to_driver`` (off for the local main job: the workers are noisy). With ``path`` the lines are appended to
    that file instead and :func:`follow` echoes them on the driver."""

    TERMS = ("loss", "contrastive_loss", "distill_loss", "dtw_loss", "mam_loss")

    def __init__(self, max_steps: int, echo=None, path: str | None = None):
        # echo None means print, looked up when called: the callback is pickled to the controller, and a captured
        # or patched builtins.print (pytest) does not pickle
        self.max_steps, self.echo, self.path = max_steps, echo, path
        self.last: tuple[int, float] | None = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not metrics or "step" not in metrics[0]:
            return
        line = self.line(metrics[0], time.monotonic())
        if self.path is None:
            (self.echo or print)(line)
            return
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as err:  # progress is a convenience: never fail the run for it
            log.warning("could not write progress to %s: %s", self.path, err)

    def line(self, m: dict, now: float) -> str:
        step = int(m["step"])
        parts = [f"step {step}/{self.max_steps}"]
        parts += [f"{k.removesuffix('_loss') or k} {m[k]:.3f}" for k in self.TERMS if k in m]
        if self.last is not None and step > self.last[0]:
            per_step = (now - self.last[1]) / (step - self.last[0])
            parts.append(f"{per_step:.2f} s/step, ~{per_step * (self.max_steps - step) / 60:.1f} min left")
        self.last = (step, now)
        return "    train: " + " | ".join(parts)


def file_size(path: str) -> int:
    """Bytes in ``path`` (0 when it does not exist): where :func:`follow` should start."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def follow(path: str, stop, echo=print, poll_s: float = 1.0, start: int = 0) -> None:
    """Echo the lines appended to ``path`` after byte ``start`` until ``stop`` (a threading.Event) is set, then the
    rest (thread body). Pass ``start=file_size(path)``, taken before training starts, so the lines of an earlier
    attempt of a resumed run are not repeated."""
    position = start
    while True:
        done = stop.wait(poll_s)
        try:
            with open(path) as f:
                f.seek(position)
                chunk = f.read()
        except FileNotFoundError:
            chunk = ""
        complete = chunk[: chunk.rfind("\n") + 1]  # whole lines only
        position += len(complete)
        for line in complete.splitlines():
            echo(line)
        if done:
            return
