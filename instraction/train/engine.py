"""DeepSpeed engine around the single-device model: JSON config + TrainConfig, torch AdamW, ZeRO stage 0-3.

The ZeRO layout (bucket sizes, overlap, ZeRO-3 thresholds) lives in ``configs/deepspeed/zero{stage}.json`` (of
``$INSTRACTION_HOME``, the package's checkout or the working directory: :func:`config_dirs`); the values that must
agree with the run config (micro batch, clipping, precision) are always set from
:class:`~instraction.train.config.TrainConfig`, so the JSON never silently disagrees with it.

The optimizer is ``torch.optim.AdamW`` (fused where torch has the kernel: :func:`adamw`) handed to
``deepspeed.initialize`` (``zero_allow_untested_optimizer``), not DeepSpeed's ``cpu_adam`` (a C++ op that would
need compiling on every CPU image). The LR scheduler stays outside DeepSpeed: DeepSpeed steps its scheduler only
on applied steps, whereas here the rate is a function of the training step, skipped steps included
(``schedule.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instraction.train.config import TrainConfig

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
"""``configs/deepspeed`` of the checkout this package was imported from (a source tree or an editable install)."""
HOME_ENV = "INSTRACTION_HOME"
"""A repository root whose ``configs/deepspeed`` is looked in first (set in the cluster image)."""


def config_dirs() -> list[Path]:
    """Where ``zero{stage}.json`` is looked for, in order: ``$INSTRACTION_HOME/configs/deepspeed``, the package's
    own checkout (:data:`CONFIG_DIR`; missing when the package is installed non-editable into site-packages), and
    ``configs/deepspeed`` under the working directory (a Ray job's ``--working-dir``)."""
    dirs = [CONFIG_DIR, Path.cwd() / "configs" / "deepspeed"]
    if os.environ.get(HOME_ENV):
        dirs.insert(0, Path(os.environ[HOME_ENV]).expanduser() / "configs" / "deepspeed")
    return dirs


def config_path(train: TrainConfig) -> Path:
    """``train.deepspeed_config`` as given, else the first ``zero{train.zero_stage}.json`` of :func:`config_dirs`."""
    if train.deepspeed_config:
        candidates = [Path(train.deepspeed_config).expanduser()]
    else:
        candidates = [d / f"zero{train.zero_stage}.json" for d in config_dirs()]
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p.absolute()) for p in candidates)
    hint = "" if train.deepspeed_config else f" (set {HOME_ENV} to the repository root, or train.deepspeed_config)"
    raise FileNotFoundError(f"DeepSpeed config not found; tried: {tried}{hint}")


def native_bf16(use_gpu: bool) -> bool:
    """Whether this process's training device computes bf16 in hardware: a CUDA GPU with bf16 (Ampere on; not
    counting torch's emulation on older GPUs), or a CPU with AMX tiles or AVX512-BF16 (oneDNN's bf16 convolutions
    and matmuls; elsewhere oneDNN emulates them). Measured only on an AMX Xeon (README, session 11)."""
    if use_gpu:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(train: TrainConfig, native: bool | None = None) -> TrainConfig:
    """``train`` with the precision this process trains in: ``auto`` becomes ``bf16-mixed`` where the device
    computes bf16 natively (``native``, default :func:`native_bf16`; the workers pass what every rank agrees on),
    else ``fp32``; bf16 asked of a GPU without it becomes fp16 with loss scaling. Others are returned as they are."""
    if train.precision == "auto":
        native = native_bf16(train.use_gpu) if native is None else native
        return dataclasses.replace(train, precision="bf16-mixed" if native else "fp32")
    if train.precision.startswith("bf16") and train.use_gpu and torch.cuda.is_available() \
            and not native_bf16(use_gpu=True):
        log.warning("precision=%s but this GPU has no bf16 (pre-Ampere): training in fp16 with loss scaling",
                    train.precision)
        return dataclasses.replace(train, precision="fp16")
    return train


def deepspeed_config(train: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed JSON for ``train.zero_stage`` (or ``train.deepspeed_config``) with the run's values set.
    ``train.precision`` must be concrete (:func:`resolve_precision`)."""
    if train.precision == "auto":
        raise ValueError("train.precision=auto must be resolved for this device first (resolve_precision)")
    cfg = json.loads(config_path(train).read_text())
    cfg["train_micro_batch_size_per_gpu"] = train.batch_size
    cfg["gradient_accumulation_steps"] = 1
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x world size
    cfg["gradient_clipping"] = train.grad_clip
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": train.precision == "bf16"}
    cfg["fp16"] = {**cfg.get("fp16", {}), "enabled": train.precision == "fp16"}
    if train.precision == "bf16-mixed":  # fp32 weights and optimizer; the forward runs under autocast
        cfg["torch_autocast"] = {**cfg.get("torch_autocast", {}), "enabled": True, "dtype": "bfloat16"}
        if not train.use_gpu:
            # DeepSpeed reduces Linear/Conv gradients in bf16 under autocast (half the bytes, for GPU clusters); on
            # gloo the model's few MB cost nothing to send in fp32, so no gradient is rounded across ranks
            cfg["torch_autocast"].setdefault("lower_precision_safe_modules", [])
    cfg.setdefault("zero_optimization", {}).setdefault("stage", train.zero_stage)
    if is_plain(cfg):
        cfg["gradient_clipping"] = 0.0  # the loop clips: DeepSpeed's fp32 clip breaks on 0-dim parameters (0.19)
    cfg["zero_allow_untested_optimizer"] = True
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices/kernels; never biases, norm scales, embeddings or scalars (CLIP, open_clip)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith(".bias")
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]], train: TrainConfig) -> torch.optim.AdamW:
    """The run's AdamW: torch's fused kernel where it runs (CPU and CUDA parameters: one pass over all parameters
    instead of ~10 small ops per tensor; the default model's update 2.9 -> 0.8 ms on one core), else the default."""
    kwargs = dict(lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    params = [p for g in groups for p in g["params"]]
    if params and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):  # a torch without the fused kernel for this device
            pass
    return torch.optim.AdamW(groups, **kwargs)


def plain_training(cfg, total_steps: int | None = None):
    """The workers' update without Ray or DeepSpeed, for single-process references (the train and learn
    benchmarks): the run's model (seeded by ``run.seed``), AdamW on :func:`param_groups`, the warmup + cosine
    schedule over ``total_steps`` (default ``train.max_steps``), gradient clipping and, for
    ``train.precision=bf16-mixed`` (or ``auto`` resolved so), the forward under bf16 autocast. Returns ``(model, step)``,
    ``step(batch)`` running one forward, backward and update and returning the model's output dict."""
    from instraction.data.tokenizer import build_tokenizer
    from instraction.model.instraction import build_model
    from instraction.train.schedule import build_scheduler

    t = resolve_precision(cfg.train)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg, build_tokenizer(cfg.data.tokenizer).vocab_size).train()
    optimizer = adamw(param_groups(model, t.weight_decay), t)
    scheduler = build_scheduler(optimizer, t.warmup_steps, total_steps or t.max_steps, t.min_lr_ratio)

    autocast = t.precision == "bf16-mixed"  # as DeepSpeed's torch_autocast: fp32 weights, a bf16 forward

    def step(batch: dict) -> dict:
        with torch.autocast("cuda" if t.use_gpu else "cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return out

    return model, step


def build_engine(model: nn.Module, train: TrainConfig):
    """Wrap ``model`` (already on its device) in a DeepSpeed engine; returns ``(engine, torch_optimizer)``.

    ``torch_optimizer`` is the AdamW inside DeepSpeed's wrapper (its param groups are the ones stepped), the one
    an LR scheduler drives. Uses the process group Ray Train already set up (gloo on CPU, nccl on GPU).
    """
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if train.use_gpu else "cpu")
    import deepspeed

    train = resolve_precision(train)

    groups = param_groups(model, train.weight_decay)
    optimizer = adamw(groups, train)
    with _zero_dim_safe_broadcast():
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(train))
    return engine, optimizer


@contextlib.contextmanager
def _zero_dim_safe_broadcast():
    """DeepSpeed (0.19) broadcasts rank 0's weights as ``p.data.view(torch.uint8)``, which torch refuses for 0-dim
    parameters such as CLIP's ``logit_scale`` (in the engine's model broadcast, and in ZeRO-3's conversion of the
    parameters). For the duration of those calls such a parameter gets a 1-element view of its own storage (the
    broadcast writes through it); afterwards its 0-dim shape is put back (ZeRO-3: the shape gathers restore)."""
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.partition_parameters import Init

    original_broadcast, original_zero_init = DeepSpeedEngine._broadcast_model, Init._zero_init_param

    def broadcast(engine_self):
        scalars = [p for p in engine_self.module.parameters() if p.dim() == 0]
        for p in scalars:
            p.data = p.data.reshape(1)
        try:
            original_broadcast(engine_self)
        finally:
            for p in scalars:
                p.data = p.data.reshape(())

    def zero_init_param(init_self, param):
        if param.dim() != 0:
            return original_zero_init(init_self, param)
        param.data = param.data.reshape(1)
        original_zero_init(init_self, param)  # records ds_shape [1], broadcasts, partitions
        param.ds_shape = torch.Size([])

    DeepSpeedEngine._broadcast_model, Init._zero_init_param = broadcast, zero_init_param
    try:
        yield
    finally:
        DeepSpeedEngine._broadcast_model, Init._zero_init_param = original_broadcast, original_zero_init


def is_plain(ds_config: dict[str, Any]) -> bool:
    """fp32 without ZeRO: DeepSpeed steps the torch optimizer directly, with no check for non-finite gradients.

    ZeRO 1-3 and the bf16/fp16 optimizers skip such steps themselves (``engine.was_step_applied()``); on the plain
    path the loop clips and checks the (already all-reduced, so identical on every rank) gradients itself."""
    return (ds_config.get("zero_optimization", {}).get("stage", 0) == 0
            and not ds_config.get("bf16", {}).get("enabled") and not ds_config.get("fp16", {}).get("enabled"))


def clip_plain_gradients(engine, max_norm: float) -> float:
    """Clip the ``.grad`` of a plain engine's parameters to ``max_norm`` (0: no clipping); returns the norm before."""
    params = [p for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))


def floating_dtype(engine) -> torch.dtype:
    """The dtype DeepSpeed holds the module in: inputs' floating tensors are cast to it."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32
