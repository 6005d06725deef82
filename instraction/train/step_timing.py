"""Measuring the training step: the world-size-1 process group, building the engine, timed steps, the profile,
each component alone, GEMM and matmul rates. Used by :mod:`instraction.train.step_benchmark` (its docstring says
what is measured and how to run it).
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import torch

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
        from instraction.train.engine import adamw, param_groups

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision, torch.float32)
        self.module = model.to(dtype)
        self.dtype = dtype
        self.autocast = train.precision == "bf16-mixed"
        self.optimizer = adamw(param_groups(model, train.weight_decay), train)
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
    picks: dict[str, str] = {}
    banded = sys.modules.get("instraction.kernels.banded_attention.triton")
    for name, tuner in (getattr(banded, "_tuned", {}) or {}).items():
        picks[f"banded {name}"] = "; ".join(f"{k}: {c}" for k, c in getattr(tuner, "cache", {}).items())
    sdtw = sys.modules.get("instraction.kernels.soft_dtw.triton")
    if sdtw is not None and hasattr(sdtw, "tuned_configs"):
        with contextlib.suppress(Exception):
            picks.update({f"soft-DTW {k}": str(v) for k, v in sdtw.tuned_configs().items()})
    return picks


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


def with_backend(cfg, backend: str):
    """The config with the custom ops (banded attention, soft-DTW) on ``backend``."""
    model = replace(cfg.model, perceiver=replace(cfg.model.perceiver, attention_backend=backend))
    return replace(cfg, model=model, loss=replace(cfg.loss, dtw_backend=backend))
