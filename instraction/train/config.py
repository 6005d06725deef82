"""Configuration of distributed training (Ray Train + DeepSpeed) and experiment tracking (MLflow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrainConfig:
    max_steps: int = 300
    """Optimizer steps of the whole run."""
    num_workers: int = 2
    """Ray Train workers (one process each; one GPU each when use_gpu)."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    batch_size: int = 32
    """Clips per worker per step (global batch = batch_size * num_workers)."""
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    """Cosine schedule floor as a fraction of lr."""
    grad_clip: float = 1.0
    precision: str = "fp32"
    """fp32 | bf16 | fp16 (bf16 on CPU works with DeepSpeed on gloo; fp16 needs a GPU)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3; the engine config is configs/deepspeed/zero{stage}.json unless deepspeed_config is set."""
    deepspeed_config: Optional[str] = None
    checkpoint_every: int = 100
    """Steps between checkpoints (each one is a ray.train.report with a Checkpoint)."""
    report_every: int = 25
    """Steps between ray.train.report calls (each blocks ~2 s in Ray Train V2)."""
    num_to_keep: int = 2
    max_failures: int = 1
    """Worker-group restarts Ray Train allows (FailureConfig)."""
    storage_path: Optional[str] = None
    """Ray Train storage (local or s3://); default: the run directory."""
    resume: bool = True
    """Resume from the latest checkpoint of a run with the same storage path and name."""
    fail_at_step: int = -1
    """Test-only: rank 0 raises once at this step (to exercise FailureConfig restarts)."""
    log_every: int = 1
    """Steps between metric logs to MLflow."""

    def validate(self, path: str) -> None:
        from instraction.config import check_choice, check_range

        check_choice(f"{path}.precision", self.precision, ["fp32", "bf16", "fp16"])
        check_choice(f"{path}.zero_stage", self.zero_stage, [0, 1, 2, 3])
        check_range(f"{path}.num_workers", self.num_workers, 1, None)
        check_range(f"{path}.max_steps", self.max_steps, 0, None)
        check_range(f"{path}.checkpoint_every", self.checkpoint_every, 1, None)
        check_range(f"{path}.report_every", self.report_every, 1, None)


@dataclass
class TrackingConfig:
    enabled: bool = True
    tracking_uri: Optional[str] = None
    """MLflow tracking URI; MLFLOW_TRACKING_URI wins when set; default: sqlite:///<run.dir>/mlflow.db."""
    experiment: str = "instraction"
