"""The paper-scale training step on one GPU, through the project's own training code, measured.

    python jobs/benchmark.py step                     # configs/howto100m_viclip_b.yaml, random init, on the GPU
    python jobs/benchmark.py step --learn 40          # ... and the learning check: 40 steps on one fixed batch
    python jobs/benchmark.py step --tiny --learn 40   # configs/default.yaml on the CPU (what the tests run)

Each configuration builds the model (random init), wraps it in the DeepSpeed engine of ``train/engine.py`` and
runs the step of the Ray Train workers (``model(batch)`` then ``train.loop.optimizer_step``) in a world-size-1
process group (NCCL on a GPU, gloo on the CPU): no Ray. Batches follow the batch contract at the config's shapes
(8 frames at 224, every clip with ``data.max_negatives`` hard negatives, 0..``max_verbs`` verb phrases).

Printed, each line timestamped (a heartbeat line at least every 20 s, so a slow compile is never silent):
step time (median of the timed steps after warm-up), clips/s, model TFLOP/s from the analytic count of
``model/flops.py`` and MFU against the dense bf16 matmul rate measured in the same process; peak GPU memory;
the custom ops on ``triton`` vs ``torch``, ZeRO-0 vs ZeRO-2, batch 32, 64 and the largest that fits; each
component's forward+backward measured alone; the CPU cores per GPU that decoding needs at that rate. ``--learn``
trains on one fixed batch and fails (exit 1) unless the loss ends under half its start.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

PAPER_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "howto100m_viclip_b.yaml"
CLIP_VOCAB = 49408
"""OpenAI CLIP's BPE vocabulary (ViCLIP's text tower): the paper-scale model's embedding rows."""


class Progress:
    """Timestamped, flushed lines; a heartbeat thread says which phase is still running every ``every`` s."""

    def __init__(self, every: float = 20.0):
        self.start = self.last = time.perf_counter()
        self.phase = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True)
        self._thread.start()

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        self.last = now
        print(f"[{time.strftime('%H:%M:%S')} +{now - self.start:6.1f}s] {message}", flush=True)

    @contextlib.contextmanager
    def stage(self, phase: str):
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every / 4):
            if time.perf_counter() - self.last >= every:
                self(f"... still {self.phase}")

    def close(self) -> None:
        self._stop.set()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="run config (default: the paper config; --tiny: default.yaml)")
    p.add_argument("--tiny", action="store_true", help="configs/default.yaml on the CPU, one small configuration")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--max-batch", type=int, default=256, help="try doubling the largest batch up to this (0: no)")
    p.add_argument("--backends", nargs="+", default=["triton", "torch"], help="custom-op backends to compare")
    p.add_argument("--zero", type=int, nargs="+", default=[0, 2, -1],
                   help="ZeRO stages compared with the config's own; -1: no DeepSpeed (bare model and AdamW)")
    p.add_argument("--precisions", nargs="+", default=["bf16-mixed", "bf16"],
                   help="train.precision values compared at each ZeRO stage (GPU only)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    p.add_argument("--no-components", action="store_true", help="skip the per-component timings")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler over 3 steps of the first configuration: the top ops on the GPU and CPU")
    p.add_argument("--learn", type=int, default=0, help="learning check: steps on one fixed batch (0: skip)")
    p.add_argument("--learn-lr", type=float, default=1e-4)
    p.add_argument("--decode-clips-per-core", type=float, default=None,
                   help="decode rate of one CPU core (jobs/benchmark.py data) for the cores-per-GPU line")
    p.add_argument("--budget-s", type=float, default=300.0, help="no new configuration starts after this")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, key=value")
    return p


# ---------------------------------------------------------------------------------------------------- set-up
def init_single_process_group(device: torch.device) -> None:
    """A world-size-1 process group (NCCL on CUDA, gloo on CPU): what DeepSpeed and the losses expect."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    import socket

    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def load_run_config(ns: argparse.Namespace, device: torch.device):
    from instraction.config import load_config

    path = ns.config or (None if ns.tiny else PAPER_CONFIG)
    if ns.tiny and path is None:
        path = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    overrides = ["model.pretrained.path=null", f"train.use_gpu={device.type == 'cuda'}", *ns.overrides]
    return load_config(path, overrides)


def vocab_size(cfg) -> int:
    """The text tower's vocabulary: model.text.vocab_size, else the tokenizer's, else (a tokenizer directory that
    is not on this machine, as on a bare GPU box) CLIP's, which the paper config names."""
    if cfg.model.text.vocab_size:
        return cfg.model.text.vocab_size
    if cfg.data.tokenizer == "words" or Path(cfg.data.tokenizer).exists():
        from instraction.data.tokenizer import build_tokenizer

        return build_tokenizer(cfg.data.tokenizer).vocab_size
    return CLIP_VOCAB


def with_backend(cfg, backend: str):
    """The config with the custom ops (banded attention, soft-DTW) on ``backend``."""
    model = replace(cfg.model, perceiver=replace(cfg.model.perceiver, attention_backend=backend))
    return replace(cfg, model=model, loss=replace(cfg.loss, dtw_backend=backend))


def build(cfg, vocab: int, device: torch.device):
    """(model on ``device``, engine, optimizer) with the training code's engine for ``cfg.train``
    (``train.zero_stage`` < 0: :class:`PlainEngine`)."""
    from instraction.model.instraction import build_model
    from instraction.train.engine import build_engine

    torch.manual_seed(cfg.run.seed)
    with torch.device(device):  # parameters initialised in place on the GPU
        model = build_model(cfg, vocab)
    if cfg.train.zero_stage < 0:
        engine = PlainEngine(model, cfg.train)
        return model, engine, engine.optimizer
    engine, optimizer = build_engine(model, cfg.train)
    return model, engine, optimizer


class PlainEngine:
    """The DeepSpeed engine's surface used by the step, over the bare model in the training dtype and torch AdamW
    (``--zero -1``): a reference that shows what the engine itself costs, not a training path."""

    def __init__(self, model: torch.nn.Module, train):
        from instraction.train.engine import param_groups

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision, torch.float32)
        self.module = model.to(dtype)
        self.dtype = dtype
        self.autocast = train.precision == "bf16-mixed"
        self.optimizer = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, fused=None)
        self.grad_clip = train.grad_clip
        self._norm = None

    def __call__(self, batch: dict) -> dict:
        device = next(self.module.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.autocast):
            return self.module(batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self._norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def was_step_applied(self) -> bool:
        return True

    def get_global_grad_norm(self):
        return self._norm

    def bfloat16_enabled(self) -> bool:
        return self.dtype == torch.bfloat16

    def fp16_enabled(self) -> bool:
        return self.dtype == torch.float16

    def zero_optimization_stage(self) -> int:
        return 0


def make_batch(cfg, vocab: int, batch_size: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    from instraction.model.testing import make_dummy_batch
    from instraction.train.batches import to_device

    batch = make_dummy_batch(cfg, vocab, batch_size, seed=seed, all_negatives=True)
    batch.pop("key")
    return to_device(batch, device, dtype)


def engine_dtype(engine) -> torch.dtype:
    if engine.bfloat16_enabled():
        return torch.bfloat16
    return torch.float16 if engine.fp16_enabled() else torch.float32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(*objects) -> None:
    for obj in objects:
        destroy = getattr(obj, "destroy", None)
        if callable(destroy):
            with contextlib.suppress(Exception):
                destroy()
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_peak_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Dense bf16 matmul rate of this GPU, measured here (random operands, events, after warm-up)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def gemm_check(device: torch.device, rows: int, width: int, hidden: int) -> list[str]:
    """bf16 TFLOP/s of the ViT's linear layers ([rows, in] x [in, out] + bias) through F.linear (addmm, cuBLASLt
    with a bias epilogue) and through matmul then a bias add: shows which GEMM kernels this torch picks."""
    from triton.testing import do_bench

    lines = []
    for n_in, n_out in ((width, 3 * width), (width, width), (width, hidden), (hidden, width)):
        x = torch.randn(rows, n_in, device=device, dtype=torch.bfloat16)
        w = torch.randn(n_out, n_in, device=device, dtype=torch.bfloat16)
        b = torch.randn(n_out, device=device, dtype=torch.bfloat16)
        flop = 2 * rows * n_in * n_out
        linear = do_bench(lambda: torch.nn.functional.linear(x, w, b), return_mode="median")
        split = do_bench(lambda: (x @ w.t()).add_(b), return_mode="median")
        lines.append(f"[{rows},{n_in}]x[{n_in},{n_out}]: F.linear {flop / linear / 1e9:6.0f} TFLOP/s, "
                     f"matmul + bias {flop / split / 1e9:6.0f} TFLOP/s")
    return lines


# ------------------------------------------------------------------------------------------------ measuring
def run_steps(engine, batch: dict, n: int, device: torch.device, say: Callable[[str], None] | None = None,
              scheduler=None, grad_clip: float = 1.0) -> tuple[list[float], list[dict[str, float]]]:
    """``n`` training steps on ``batch``: (seconds per step, loss values per step)."""
    from instraction.train.loop import optimizer_step

    # the loop's is_plain(), read off the engine: fp32 without ZeRO clips and checks gradients itself
    plain = not (engine.bfloat16_enabled() or engine.fp16_enabled() or engine.zero_optimization_stage() > 0)
    times, losses = [], []
    for i in range(n):
        sync(device)
        t0 = time.perf_counter()
        out = engine(batch)
        values, grad_norm, applied = optimizer_step(engine, out, 1, plain, grad_clip)
        if scheduler is not None:
            scheduler.step()
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append({**values, "grad_norm": grad_norm, "applied": float(applied)})
        if say is not None:
            say(f"  step {i + 1}/{n}: {times[-1] * 1e3:.1f} ms, loss {values['loss']:.4f}")
    return times, losses


def config_name(backend: str, zero: int, precision: str, batch_size: int) -> str:
    stage = f"ZeRO-{zero}" if zero >= 0 else "no DeepSpeed"
    return f"{backend} {stage} {precision} batch {batch_size}"


def measure_config(cfg, vocab: int, device: torch.device, backend: str, zero: int, precision: str,
                   batch_size: int, ns: argparse.Namespace, progress: Progress,
                   peak_tflops: float | None) -> dict[str, Any]:
    """Build, warm up and time one (backend, ZeRO stage, precision, batch) configuration; OOM is a result."""
    from instraction.model.flops import TRAIN_FACTOR, forward_flops

    name = config_name(backend, zero, precision, batch_size)
    cfg = with_backend(cfg, backend)
    cfg = replace(cfg, train=replace(cfg.train, zero_stage=zero, precision=precision, batch_size=batch_size))
    row: dict[str, Any] = {"backend": backend, "zero": zero, "precision": precision, "batch": batch_size}
    model = engine = optimizer = batch = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with progress.stage(f"building {name}"):
            t0 = time.perf_counter()
            model, engine, optimizer = build(cfg, vocab, device)
            batch = make_batch(cfg, vocab, batch_size, device, engine_dtype(engine))
            progress(f"{name}: engine and batch ready in {time.perf_counter() - t0:.1f} s")
        with progress.stage(f"warming up {name} (the first step compiles and autotunes the Triton kernels)"):
            warm, _ = run_steps(engine, batch, ns.warmup, device, progress)
        with progress.stage(f"timing {name}"):
            times, losses = run_steps(engine, batch, ns.steps, device)
        step_s = statistics.median(times)
        if ns.profile:
            ns.profile = False  # the first configuration only
            with progress.stage(f"profiling {name}"):
                row["profile"] = profile_steps(engine, batch, device, progress)
        flops = TRAIN_FACTOR * forward_flops(engine.module, batch, banded=backend == "triton")["total"]
        row.update(status="ok", first_step_s=warm[0] if warm else None, step_s=step_s,
                   clips_per_s=batch_size / step_s, model_tflops=flops / step_s / 1e12, step_tflop=flops / 1e12,
                   loss_first=losses[0]["loss"], loss_last=losses[-1]["loss"],
                   finite=all(math.isfinite(v["loss"]) for v in losses))
        if peak_tflops:
            row["mfu"] = row["model_tflops"] / peak_tflops
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        progress(f"{name}: {format_row(row)}")
    except torch.cuda.OutOfMemoryError as err:
        row.update(status="oom", error=str(err).splitlines()[0][:160])
        progress(f"{name}: out of GPU memory")
    except Exception as err:  # a failing configuration is reported; the others still run
        row.update(status="error", error=f"{type(err).__name__}: {err}"[:400])
        progress(f"{name}: FAILED {row['error']}")
    finally:
        release(engine, optimizer, model)
        del model, engine, optimizer, batch
        release()
    return row


def profile_steps(engine, batch: dict, device: torch.device, progress: Progress, steps: int = 3) -> dict:
    """torch.profiler over ``steps`` steps: device-busy time per step against wall time, and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        run_steps(engine, batch, steps, device)
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    busy_ms = sum(getattr(e, key, 0.0) for e in events) / steps / 1e3 if device.type == "cuda" else None
    progress(f"profile: {wall_ms:.1f} ms per step (under the profiler)"
             + (f", GPU kernels {busy_ms:.1f} ms per step ({100 * busy_ms / wall_ms:.0f}% busy)" if busy_ms else ""))
    for sort in ([key, "self_cpu_time_total"] if device.type == "cuda" else [key]):
        try:
            table = events.table(sort_by=sort, row_limit=22, max_name_column_width=55)
        except Exception as err:  # a sort key this torch does not know
            table = f"({type(err).__name__}: {err})"
        print(f"top ops by {sort}, {steps} steps:\n{table}", flush=True)
    return {"wall_ms": wall_ms, "gpu_busy_ms": busy_ms}


def autotuned() -> dict[str, str]:
    """The configs the Triton autotuners picked so far (per kernel and shape key)."""
    import sys as _sys

    picks: dict[str, str] = {}
    banded = _sys.modules.get("instraction.kernels.banded_attention.triton")
    for name, tuner in (getattr(banded, "_tuned", {}) or {}).items():
        picks[f"banded {name}"] = "; ".join(f"{k}: {c}" for k, c in getattr(tuner, "cache", {}).items())
    sdtw = _sys.modules.get("instraction.kernels.soft_dtw.triton")
    if sdtw is not None and hasattr(sdtw, "tuned_configs"):
        with contextlib.suppress(Exception):
            picks.update({f"soft-DTW {k}": str(v) for k, v in sdtw.tuned_configs().items()})
    return picks


def format_row(row: dict[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {row.get('error', '')}"
    parts = [f"step {row['step_s'] * 1e3:.1f} ms", f"{row['clips_per_s']:.1f} clips/s",
             f"{row['model_tflops']:.1f} TFLOP/s"]
    if "mfu" in row:
        parts.append(f"MFU {100 * row['mfu']:.1f}%")
    if "peak_gib" in row:
        parts.append(f"peak {row['peak_gib']:.1f} GiB")
    parts.append(f"first step {row['first_step_s']:.1f} s")
    return ", ".join(parts)


def _timed(fn: Callable[[], Any], device: torch.device, reps: int = 5) -> float:
    """Median seconds of ``fn`` (forward and backward of one component) after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def component_times(cfg, vocab: int, batch_size: int, device: torch.device, dtype: torch.dtype,
                    backend: str) -> dict[str, float]:
    """Forward+backward seconds of each component alone, on a plain copy of the model in the training dtype
    (not the engine's module: DeepSpeed's gradient hooks must not see these backward passes). Each component
    gets its real inputs (detached, requiring grad) and a random output gradient."""
    from instraction.model.instraction import build_model, negative_masks
    from instraction.losses.mam import mam_loss_from_hidden

    cfg = with_backend(cfg, backend)
    torch.manual_seed(cfg.run.seed)
    with torch.device(device):
        m = build_model(cfg, vocab).to(dtype)
    batch = make_batch(cfg, vocab, batch_size, device, dtype)

    def backward(*outputs: torch.Tensor) -> None:
        outputs = [o for o in outputs if o.requires_grad]
        torch.autograd.backward(outputs, [torch.randn_like(o) for o in outputs])

    def leaf(x: torch.Tensor) -> torch.Tensor:
        return x.detach().clone().requires_grad_(True)

    with torch.no_grad():
        tokens, _ = m.video(batch["video"])
        s = m.perceiver(tokens)
    neg_tokens, neg_valid = negative_masks(batch)
    verb_count = batch["verb_count"].long()
    verb_valid = torch.arange(batch["verb_ids"].shape[1], device=device)[None] < verb_count[:, None]
    e = cfg.model.embed_dim
    b, nn_, m_verbs = batch_size, batch["neg_ids"].shape[1], batch["verb_ids"].shape[1]

    def unit(*shape):
        return leaf(torch.nn.functional.normalize(torch.randn(*shape, device=device, dtype=dtype), dim=-1))

    video_emb, text_emb, teacher_emb, negs = unit(b, e), unit(b, e), unit(b, e), unit(b, nn_, e)
    s_proj, verbs_proj = leaf(torch.randn(b, m.perceiver.num_latents, e, device=device, dtype=dtype)), \
        leaf(torch.randn(b, m_verbs, e, device=device, dtype=dtype))
    verb_queries = leaf(torch.randn(b, m_verbs, m.perceiver.width, device=device, dtype=dtype))
    def scale():
        return m.scale()

    parts: dict[str, Callable[[], Any]] = {
        "video tower": lambda: backward(*m.video(batch["video"])),
        "text tower: captions": lambda: backward(m.text(batch["text_ids"], batch["text_mask"])[1]),
        "text tower: negatives": lambda: backward(m._encode_rows(batch["neg_ids"], neg_tokens, neg_valid)),
        "text tower: verb phrases": lambda: backward(m._encode_rows(batch["verb_ids"], batch["verb_mask"],
                                                                    verb_valid)),
        "perceiver: student": lambda: backward(m.perceiver(leaf(tokens))),
        "perceiver: teacher": lambda: backward(m.perceiver(leaf(tokens), queries=verb_queries,
                                                           query_mask=verb_valid)),
        "decoder + MAM loss": lambda: backward(mam_loss_from_hidden(
            m.decoder(batch["mam_ids"], batch["text_mask"], leaf(s)), batch["mam_labels"], m.decoder.lm_head)),
        "contrastive loss": lambda: backward(m.contrastive_loss(video_emb, text_emb, scale(), negs, neg_valid)),
        "distill loss": lambda: backward(sum(m.distill_loss.terms(video_emb, teacher_emb, text_emb, scale(),
                                                                  verb_count > 0))),
        "DTW-Align loss (soft-DTW)": lambda: backward(sum(t.float().sum() for t in
                                                          m.dtw_loss.terms(s_proj, verbs_proj, verb_count)[:2])),
    }
    out = {name: _timed(fn, device) for name, fn in parts.items()}
    release(m)
    return out


def learning_check(cfg, vocab: int, device: torch.device, steps: int, lr: float, batch_size: int,
                   progress: Progress) -> dict[str, Any]:
    """``steps`` training steps on one fixed batch (warm-up of steps/10, cosine to the end): the loss must end
    under half of its start."""
    from instraction.train.engine import floating_dtype
    from instraction.train.schedule import build_scheduler

    train = replace(cfg.train, lr=lr, warmup_steps=max(1, steps // 10), max_steps=steps, batch_size=batch_size)
    cfg = replace(cfg, train=train)
    model, engine, optimizer = build(cfg, vocab, device)
    scheduler = build_scheduler(optimizer, train.warmup_steps, train.max_steps, train.min_lr_ratio)
    batch = make_batch(cfg, vocab, batch_size, device, floating_dtype(engine), seed=1)

    def every_fifth(line: str) -> None:
        step = int(line.split("step ")[1].split("/")[0])
        if step == 1 or step % 5 == 0:
            progress(line)

    with progress.stage("learning check"):
        _, losses = run_steps(engine, batch, steps, device, every_fifth, scheduler, train.grad_clip)
    first, last = losses[0]["loss"], losses[-1]["loss"]
    terms = {k: (losses[0][k], losses[-1][k]) for k in losses[0] if k.endswith("_loss")}
    release(engine, optimizer, model)
    return {"steps": steps, "batch": batch_size, "lr": lr, "loss_first": first, "loss_last": last,
            "terms": terms, "passed": bool(math.isfinite(last) and last < 0.5 * first)}


def report_components(cfg, vocab: int, device: torch.device, ns: argparse.Namespace, backend: str,
                      first: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Time each component alone at the first configuration's batch and print it as shares of that step."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
    with progress.stage("timing each component alone"):
        try:
            comp: dict[str, Any] = component_times(cfg, vocab, ns.batch_sizes[0], device, dtype, backend)
        except Exception as err:
            comp = {"error": f"{type(err).__name__}: {err}"[:300]}
    step = first.get("step_s")
    progress(f"components at batch {ns.batch_sizes[0]} ({backend}), forward+backward each alone:")
    for name, seconds in comp.items():
        if not isinstance(seconds, float):
            progress(f"  {name}: {seconds}")
            continue
        share = f" ({100 * seconds / step:4.1f}% of the step)" if step else ""
        progress(f"  {name:28s} {seconds * 1e3:8.2f} ms{share}")
    if step and all(isinstance(v, float) for v in comp.values()):
        progress(f"  {'rest (optimizer, DeepSpeed)':28s} {(step - sum(comp.values())) * 1e3:8.2f} ms")
    return comp


# ------------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    # as the training workers do (train.launch.worker_environment); read by torch at its first addmm
    os.environ.setdefault("DISABLE_ADDMM_CUDA_LT", "1")
    device = torch.device("cuda" if torch.cuda.is_available() and not ns.tiny else "cpu")
    progress = Progress()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    try:
        return _run(ns, device, progress, results)
    finally:
        progress.close()
        if ns.out:
            Path(ns.out).write_text(json.dumps(results, indent=1, default=str))


def _run(ns: argparse.Namespace, device: torch.device, progress: Progress, results: dict[str, Any]) -> int:
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    cfg = load_run_config(ns, device)
    vocab = vocab_size(cfg)
    progress(f"step benchmark on {results['device']}: torch {torch.__version__}, "
             f"DISABLE_ADDMM_CUDA_LT={os.environ.get('DISABLE_ADDMM_CUDA_LT')}, {cfg.run.name}, "
             f"{cfg.model.video.kind} width {cfg.model.video.width}, {cfg.data.num_frames}x{cfg.data.size}^2, "
             f"{cfg.train.precision}, vocab {vocab}")
    with progress.stage("initialising the process group"):
        init_single_process_group(device)
    peak = None
    if device.type == "cuda":
        peak = matmul_peak_tflops(device)
        progress(f"dense bf16 matmul (8192^3) measured here: {peak:.0f} TFLOP/s (the MFU denominator)")
        if cfg.model.video.kind == "vit":
            grid = cfg.data.size // cfg.model.video.patch_size  # the tower's rows: T*P patch tokens + a class token
            tokens = ns.batch_sizes[0] * (cfg.data.num_frames * grid**2 + 1)
            hidden = int(round(cfg.model.video.width * cfg.model.video.mlp_ratio))
            for line in gemm_check(device, tokens, cfg.model.video.width, hidden):
                progress(f"  ViT linear {line}")
    results["peak_tflops"] = peak

    # the config's own setting first (with the profile and the component timings), then one change at a time
    first = ns.backends[-1] if ns.tiny and device.type == "cpu" else ns.backends[0]
    own = (first, cfg.train.zero_stage, cfg.train.precision)
    plan = [(*own, ns.batch_sizes[0])]
    if not ns.tiny:
        plan += [(backend, *own[1:], ns.batch_sizes[0]) for backend in ns.backends if backend != first]
        plan += [(first, zero, precision, ns.batch_sizes[0]) for zero in ns.zero for precision in ns.precisions
                 if (first, zero, precision) != own and (zero >= 0 or precision == ns.precisions[0])]
        plan += [(*own, b) for b in ns.batch_sizes[1:]]
    rows = results.setdefault("configs", [])
    started = time.perf_counter()
    for i, (backend, zero, precision, batch_size) in enumerate(plan):
        if time.perf_counter() - started > ns.budget_s:
            name = config_name(backend, zero, precision, batch_size)
            progress(f"budget of {ns.budget_s:.0f} s spent: skipping {name}")
            continue
        rows.append(measure_config(cfg, vocab, device, backend, zero, precision, batch_size, ns, progress, peak))
        if i == 0:
            results["autotuned"] = autotuned()
            for kernel, pick in results["autotuned"].items():
                progress(f"autotuned {kernel}: {pick}")
            if not ns.no_components:
                results["components"] = report_components(cfg, vocab, device, ns, plan[0][0], rows[0], progress)
    # the largest batch that fits: keep doubling from the largest that ran
    ok = [r["batch"] for r in rows if r.get("status") == "ok" and (r["backend"], r["zero"], r["precision"]) == own]
    b = max(ok) * 2 if ok else 0
    while not ns.tiny and ok and ns.max_batch and b <= ns.max_batch and time.perf_counter() - started < ns.budget_s:
        row = measure_config(cfg, vocab, device, *own, b, ns, progress, peak)
        rows.append(row)
        if row.get("status") != "ok":
            break
        b *= 2

    good = [r for r in rows if r.get("status") == "ok"]
    if good:
        best = max(good, key=lambda r: r["clips_per_s"])
        results["best"] = best
        name = config_name(best["backend"], best["zero"], best["precision"], best["batch"])
        progress(f"best: {name}: {format_row(best)}")
        if ns.decode_clips_per_core:
            cores = best["clips_per_s"] / ns.decode_clips_per_core
            results["cpu_cores_per_gpu"] = cores
            progress(f"feeding it at {ns.decode_clips_per_core:.1f} decoded clips/s per CPU core needs "
                     f"{cores:.1f} cores per GPU (train.cpus_per_worker = {cfg.train.cpus_per_worker})")

    rc = 0 if good and all(r.get("finite", True) for r in good) else 1
    if ns.learn:
        batch_size = ns.batch_sizes[0]
        with progress.stage("building the learning check"):
            check = learning_check(with_backend(cfg, plan[0][0]), vocab, device, ns.learn, ns.learn_lr, batch_size,
                                   progress)
        results["learning"] = check
        verdict = "PASS" if check["passed"] else "FAIL"
        progress(f"learning check {verdict}: loss {check['loss_first']:.4f} -> {check['loss_last']:.4f} in "
                 f"{check['steps']} steps on one batch of {batch_size} ({plan[0][0]}, {cfg.train.precision}; "
                 f"goal < half)")
        for name, (a, z) in check["terms"].items():
            progress(f"  {name:18s} {a:.4f} -> {z:.4f}")
        rc = rc or (0 if check["passed"] else 1)
    return rc


if __name__ == "__main__":
    sys.exit(main())
