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
import json
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from instraction.train.step_timing import (
    Progress, autotuned, build, component_times, engine_dtype, gemm_check, init_single_process_group, make_batch,
    matmul_peak_tflops, profile_steps, release, run_steps, with_backend)

PAPER_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "howto100m_viclip_b.yaml"
CLIP_VOCAB = 49408
FEED_RATES = (5.76, 166.0)
"""Clips per CPU core at paper settings, decoding video and reading the q95 frames store (2-core CPU, README "Data
feed at paper settings"); the GPU image has no PyAV to measure them where the step runs."""
"""OpenAI CLIP's BPE vocabulary (ViCLIP's text tower): the paper-scale model's embedding rows."""


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
    p.add_argument("--decode-clips-per-core", type=float, nargs=2, default=list(FEED_RATES),
                   metavar=("DECODE", "STORE"),
                   help="clips per CPU core of decoding video and of reading the frames store "
                        "(jobs/benchmark.py data --paper-only) for the cores-per-GPU lines")
    p.add_argument("--budget-s", type=float, default=300.0, help="no new configuration starts after this")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, key=value")
    return p


# ---------------------------------------------------------------------------------------------------- set-up


def load_run_config(ns: argparse.Namespace, device: torch.device):
    from instraction.config import load_config

    path = ns.config or (None if ns.tiny else PAPER_CONFIG)
    if ns.tiny and path is None:
        path = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    from instraction.train.engine import resolve_precision

    overrides = ["model.pretrained.path=null", f"train.use_gpu={device.type == 'cuda'}", *ns.overrides]
    cfg = load_config(path, overrides)
    return replace(cfg, train=resolve_precision(cfg.train))  # rows name the precision measured, never "auto"


def vocab_size(cfg) -> int:
    """The text tower's vocabulary: model.text.vocab_size, else the tokenizer's, else (a tokenizer directory that
    is not on this machine, as on a bare GPU box) CLIP's, which the paper config names."""
    if cfg.model.text.vocab_size:
        return cfg.model.text.vocab_size
    if cfg.data.tokenizer == "words" or Path(cfg.data.tokenizer).exists():
        from instraction.data.tokenizer import build_tokenizer

        return build_tokenizer(cfg.data.tokenizer).vocab_size
    return CLIP_VOCAB


# ------------------------------------------------------------------------------------------------ measuring


def config_name(backend: str, zero: int, precision: str, batch_size: int) -> str:
    stage = f"ZeRO-{zero}" if zero >= 0 else "no DeepSpeed"
    return f"{backend} {stage} {precision} batch {batch_size}"


def measure_config(cfg, vocab: int, device: torch.device, backend: str, zero: int, precision: str,
                   batch_size: int, ns: argparse.Namespace, progress: Progress,
                   peak_tflops: float | None) -> dict[str, Any]:
    """Build, warm up and time one (backend, ZeRO stage, precision, batch) configuration; OOM is a result."""
    from instraction.model.flops import TRAIN_FACTOR, forward_flops
    from instraction.train.engine import resolve_precision

    precision = resolve_precision(replace(cfg.train, precision=precision)).precision
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
        decode, store = ns.decode_clips_per_core
        results["cpu_cores_per_gpu"] = {"decoding": best["clips_per_s"] / decode,
                                        "frames_store": best["clips_per_s"] / store}
        progress(f"feeding {best['clips_per_s']:.0f} clips/s: {best['clips_per_s'] / decode:.1f} CPU cores per GPU "
                 f"decoding video ({decode:g} clips/s per core), {best['clips_per_s'] / store:.2f} reading the frames "
                 f"store ({store:g}); the config gives a worker {cfg.train.cpus_per_worker:g} "
                 f"(train.cpus_per_worker)")

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
