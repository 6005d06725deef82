"""Curation benchmark: rules-backend captions/s per core; hf-backend throughput vs raw ``generate``.

    python jobs/benchmark.py curation                       # both parts
    python jobs/benchmark.py curation --part rules --captions 20000
    python jobs/benchmark.py curation --part hf --hidden 256 --layers 4 --new-tokens 32

rules: SynthKitchen-like captions (the generator's own caption code, as in tests/test_curation_rules.py) through
the whole rules backend: filter, extraction, 9 verb-altered + 3 order-swapped negatives, annotation rows, and the
Arrow table Ray Data receives. Throughput is captions per CPU-second of this process (``time.process_time``:
"per core", and robust to other load on a shared machine). Goal >= 20,000.

hf: a random Llama (no download; garbage answers, so ``max_retries=0`` to compare one generate per caption both
ways) on the same batches of prompts: (a) in this process, the backend's stage (guards, chat template,
tokenisation, generate, parsing, quarantine rows) vs the bare tokenizer + ``model.generate`` loop; (b) through
Ray Data (an actor with 1 CPU running the stage) vs the bare loop in a Ray task with 1 CPU. Goal >= 80 %.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def synthetic_text_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` text rows with SynthKitchen captions (10 % chatter); ``truth`` holds the ground-truth actions."""
    from instraction.data import captions
    from instraction.data.config import SynthConfig

    cfg, rng = SynthConfig(), np.random.default_rng(seed)
    rows = []
    for i in range(n):
        obj = cfg.objects[int(rng.integers(len(cfg.objects)))]
        if rng.random() < cfg.chatter_fraction:
            caption, truth = captions.chatter_caption(rng), None
        else:
            k = int(rng.integers(cfg.min_actions, cfg.max_actions + 1))
            verbs = [cfg.verbs[j] for j in rng.choice(len(cfg.verbs), size=k, replace=False)]
            caption = captions.instructional_caption(verbs, obj, rng, cfg.max_caption_words)
            truth = [f"{v} {obj}" for v in verbs]
        rows.append({"key": f"{i:09d}", "shard": f"{i // 1000:05d}", "video_key": f"{i:09d}", "video_id": f"v{i}",
                     "start": 0.0, "end": 2.0, "caption": caption, "error": None, "detail": None, "truth": truth})
    return rows


def bench_rules(n: int, repeats: int) -> dict:
    from instraction.curation.backends.base import Annotator, rows_to_table
    from instraction.curation.backends.rules import _RulesStage, annotate_rows
    from instraction.curation.config import CurationConfig
    from instraction.curation.pipeline import TEXT_SCHEMA

    rows = synthetic_text_rows(n)
    annotator = Annotator(CurationConfig(), "rules", "rules-v1")
    table = rows_to_table(rows, TEXT_SCHEMA)
    stage = _RulesStage(annotator)
    annotate_rows(annotator, rows[:200]), stage(table.slice(0, 200))  # warm caches (pools, inflections)
    best_rows = best_udf = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        out = annotate_rows(annotator, rows)
        best_rows = min(best_rows, time.process_time() - t)
        t = time.process_time()
        stage(table)
        best_udf = min(best_udf, time.process_time() - t)
    truth = [(r["truth"], o) for r, o in zip(rows, out)]
    exact = sum(o["actions"] == t for t, o in truth if t) / max(1, sum(1 for t, _ in truth if t))
    filt = sum((o["decision"] == "kept") == (t is not None) for t, o in truth) / len(truth)
    return {"captions": n, "rules_captions_per_cpu_s": round(n / best_rows),
            "udf_with_arrow_captions_per_cpu_s": round(n / best_udf), "goal": 20000,
            "synthkitchen_filter_accuracy": round(filt, 4), "synthkitchen_exact_match": round(exact, 4)}


def _batches(n: int, batch: int) -> list[list[dict]]:
    rows = synthetic_text_rows(n, seed=1)
    for r in rows:
        r.pop("truth")
    return [rows[i : i + batch] for i in range(0, n, batch)]


def _raw_loop(model: str, batches: list[list[dict]], new_tokens: int, clock=time.perf_counter) -> float:
    """The baseline: chat template + tokenise + ``generate`` + decode, nothing else. Returns seconds."""
    from instraction.curation import prompts
    from instraction.curation.backends.hf import Generator

    gen = Generator(model, new_tokens)
    prompt = prompts.get_prompt("v1")
    gen.generate_ids(gen.encode([prompt.messages(batches[0][0]["caption"])]))  # warm-up
    t = clock()
    for batch in batches:
        gen.generate_ids(gen.encode([prompt.messages(r["caption"]) for r in batch]))
    return clock() - t


def _stage_loop(model: str, batches: list[list[dict]], new_tokens: int, clock=time.perf_counter) -> float:
    from instraction.curation.backends.base import Annotator, rows_to_table
    from instraction.curation.backends.hf import HFStage
    from instraction.curation.config import CurationConfig
    from instraction.curation.pipeline import TEXT_SCHEMA

    cfg = CurationConfig(backend="hf", model=model, max_new_tokens=new_tokens, max_retries=0)
    stage = HFStage(cfg, Annotator(cfg, "hf", model))
    tables = [rows_to_table(b, TEXT_SCHEMA) for b in batches]
    stage(tables[0].slice(0, 1))  # warm-up
    t = clock()
    for table in tables:
        stage(table)
    return clock() - t


def bench_hf(n: int, batch: int, hidden: int, layers: int, new_tokens: int, ray_part: bool, repeats: int = 3) -> dict:
    import torch

    from instraction.curation.tiny_lm import build_tiny_lm

    torch.set_num_threads(1)  # the same 1 CPU the Ray actor gets
    batches = _batches(n, batch)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_lm(f"{tmp}/lm", hidden=hidden, layers=layers, heads=max(1, hidden // 64))
        raw, stage = [], []
        for _ in range(repeats):  # alternate to spread drift; CPU time (1 torch thread) is robust to other load
            raw.append(_raw_loop(model, batches, new_tokens, time.process_time))
            stage.append(_stage_loop(model, batches, new_tokens, time.process_time))
        out = {"captions": n, "batch": batch, "model": f"llama h{hidden} l{layers}", "new_tokens": new_tokens,
               "raw_generate_captions_per_cpu_s": round(n / min(raw), 2),
               "hf_stage_captions_per_cpu_s": round(n / min(stage), 2),
               "in_process_ratio": round(min(raw) / min(stage), 3), "goal_ratio": 0.8}
        if ray_part:
            out.update(_bench_hf_ray(model, batches, new_tokens))
    return out


def _bench_hf_ray(model: str, batches: list[list[dict]], new_tokens: int) -> dict:
    import ray
    import ray.data

    from instraction.cluster import ray_session
    from instraction.curation.backends.base import Annotator, rows_to_table
    from instraction.curation.backends.hf import HFStage
    from instraction.curation.config import CurationConfig
    from instraction.curation.pipeline import TEXT_SCHEMA

    with ray_session(num_cpus=2):
        ray.data.DataContext.get_current().enable_progress_bars = False
        n = sum(len(b) for b in batches)
        raw_s = ray.get(ray.remote(num_cpus=1)(_raw_loop).remote(model, batches, new_tokens))
        cfg = CurationConfig(backend="hf", model=model, max_new_tokens=new_tokens, max_retries=0)
        rows = ray.data.from_arrow(rows_to_table([r for b in batches for r in b], TEXT_SCHEMA)).materialize()
        ds = rows.map_batches(HFStage, fn_constructor_args=(cfg, Annotator(cfg, "hf", model)),
                              batch_size=len(batches[0]), batch_format="pyarrow", concurrency=1, num_cpus=1)
        t = time.perf_counter()
        done = ds.count()  # includes the actor's model load: an upper bound on the overhead
        ray_s = time.perf_counter() - t
        assert done == n
        return {"ray_raw_generate_captions_per_s": round(n / raw_s, 2),
                "ray_hf_backend_captions_per_s": round(n / ray_s, 2), "ray_ratio": round(raw_s / ray_s, 3),
                "ray_note": "wall clock; the backend side includes the actor's start and model load"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["rules", "hf", "all"], default="all")
    parser.add_argument("--captions", type=int, default=20000, help="rules: captions")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf-captions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--no-ray", action="store_true", help="hf: skip the Ray Data comparison")
    ns = parser.parse_args(argv)
    results = {}
    if ns.part in ("rules", "all"):
        results["rules"] = bench_rules(ns.captions, ns.repeats)
        print(json.dumps({"rules": results["rules"]}), flush=True)
    if ns.part in ("hf", "all"):
        results["hf"] = bench_hf(ns.hf_captions, ns.batch, ns.hidden, ns.layers, ns.new_tokens, not ns.no_ray,
                                 ns.repeats)
        print(json.dumps({"hf": results["hf"]}), flush=True)
    return 0
