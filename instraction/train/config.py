"""Configuration of distributed training (Ray Train + DeepSpeed) and experiment tracking (MLflow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from instraction.config_checks import ConfigError, check_choice, check_range


@dataclass
class TrainConfig:
    max_steps: int = 300
    """Training steps of the whole run: one batch per worker each (a skipped non-finite step still counts)."""
    num_workers: int = 2
    """Ray Train workers (one process each; one GPU each when use_gpu)."""
    use_gpu: bool = False
    """One GPU per worker, NCCL and CUDA; otherwise CPU workers on gloo (DS_ACCELERATOR=cpu)."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per training worker. The decode actors of Ray Data reserve their own: on a 2-core
    machine use 0.5 (with data.decode_num_cpus=0.5), or the workers wait forever for data."""
    batch_size: int = 32
    """Clips per worker per step (global batch = batch_size * num_workers)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW), reached after warmup_steps."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay; never applied to biases, norms, embeddings or the temperature (1-D params)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas (CLIP's 0.98 for beta2)."""
    warmup_steps: int = 20
    """Linear warmup from lr/warmup_steps to lr, then cosine decay to min_lr_ratio * lr at max_steps."""
    min_lr_ratio: float = 0.05
    """Cosine schedule floor as a fraction of lr."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping (DeepSpeed gradient_clipping; 0 disables)."""
    precision: str = "fp32"
    """fp32 | bf16 (weights and gradients in bf16, DeepSpeed's bf16 optimizer) | bf16-mixed (fp32 weights, bf16
    compute under torch autocast) | fp16 (needs a GPU) | auto (bf16-mixed where the worker's device computes bf16
    natively: a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16; fp32 elsewhere, where bf16 is emulated and
    slower. Resolved by the workers together, ``train.loop.agreed_precision``: bf16 only if every rank has it)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3: the engine config is configs/deepspeed/zero{stage}.json unless deepspeed_config
    is set."""
    deepspeed_config: Optional[str] = None
    """Path of a DeepSpeed JSON to use instead; batch size, clipping and precision are still set from here."""
    checkpoint_every: int = 100
    """Steps between checkpoints (each one is a ray.train.report with a Checkpoint)."""
    report_every: int = 25
    """Steps between metric-only ray.train.report calls. A report waits while the previous one is still unread by
    the controller, which polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (1 s as instraction/cluster.py sets it):
    keep reports at least that far apart."""
    num_to_keep: int = 2
    """Checkpoints kept in storage (Ray Train CheckpointConfig); the oldest are deleted."""
    max_failures: int = 1
    """Worker-group restarts Ray Train allows (FailureConfig)."""
    storage_path: Optional[str] = None
    """Ray Train storage, local or s3://, shared by every node of a multi-node cluster; checkpoints go to
    <storage_path>/<run directory name>/checkpoint_<step> (default: the run directory itself)."""
    resume: bool = True
    """Resume from the latest checkpoint of the run with this storage path and name (a larger max_steps extends it);
    false refuses to start where a run already is."""
    fail_at_step: int = -1
    """Test-only: rank 0 raises once at this step (to exercise FailureConfig restarts); -1 never.
    "Once" is remembered by a marker file in the run directory, so the restarted run gets past it."""
    log_every: int = 1
    """Steps between metric logs to MLflow."""
    max_consecutive_nonfinite: int = 20
    """Non-finite steps are skipped and counted; this many in a row stop the run with an error."""
    export_weights: bool = True
    """Write the final weights as model.safetensors (ZeRO-3 parameters gathered) into the last checkpoint."""
    fixed_malloc_thresholds: bool = True
    """Start the workers with glibc malloc's mmap and trim thresholds fixed (32 MiB, 4 GiB) rather than adaptive.
    The step runs in a worker thread, whose malloc arena gave each step's freed activations back to the OS and
    faulted them in again: at the embedded default's shape ~6,000 page faults and ~10 ms of system time a step,
    against ~200 and 0.4 ms fixed (README, session 16). The workers then keep their peak heap. MALLOC_* variables
    set in the driver's environment win."""

    def validate(self, path: str) -> None:
        check_choice(f"{path}.precision", self.precision, ["fp32", "bf16", "bf16-mixed", "fp16", "auto"])
        check_choice(f"{path}.zero_stage", self.zero_stage, [0, 1, 2, 3])
        check_range(f"{path}.num_workers", self.num_workers, 1, None)
        check_range(f"{path}.max_steps", self.max_steps, 0, None)
        check_range(f"{path}.checkpoint_every", self.checkpoint_every, 1, None)
        check_range(f"{path}.report_every", self.report_every, 1, None)
        check_range(f"{path}.log_every", self.log_every, 1, None)
        check_range(f"{path}.batch_size", self.batch_size, 1, None)
        check_range(f"{path}.warmup_steps", self.warmup_steps, 0, None)
        check_range(f"{path}.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range(f"{path}.grad_clip", self.grad_clip, 0.0, None)
        check_range(f"{path}.num_to_keep", self.num_to_keep, 1, None)
        check_range(f"{path}.max_failures", self.max_failures, -1, None)
        check_range(f"{path}.max_consecutive_nonfinite", self.max_consecutive_nonfinite, 1, None)
        if self.precision == "fp16" and not self.use_gpu:
            raise ConfigError(f"{path}.precision=fp16 needs use_gpu=true (use bf16 or fp32 on CPU)")


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log params, per-step metrics and artifacts to MLflow (rank 0 logs metrics, the driver the rest)."""
    tracking_uri: Optional[str] = None
    """MLflow tracking URI; MLFLOW_TRACKING_URI wins when set; default: sqlite:///<run.dir>/mlflow.db.
    On a multi-node cluster use a server (http://...) every node reaches: rank 0 may run on any node."""
    experiment: str = "instraction"
    """MLflow experiment; created on first use (artifacts beside the sqlite store by default)."""
