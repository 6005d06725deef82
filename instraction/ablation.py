"""Seeded ablation runs (paper Table 4) and their mean ± spread table; the logic behind jobs/ablate.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from instraction.config import load_config

CROSS = {"semantic": "order_swapped", "logic": "verb_altered"}  # Sec. 6.1: never scored on the HN type trained with


def run_ablation(configs: Sequence[str], seeds: Sequence[int], overrides: Sequence[str] = (),
                 cross_eval: bool = False, echo: Callable[[str], None] = print) -> dict:
    """{config name: {"runs": [summary bench dicts], "run_dirs": [...]}}; with cross_eval each seed trains twice
    and the Semantic / Logic numbers come from the run with the other negative type."""
    from instraction.workflow import pretrain

    results: dict = {}
    for path in configs:
        name = Path(path).stem
        entry = results.setdefault(name, {"runs": [], "run_dirs": [], "seeds": []})
        for seed in seeds:
            variants = {task: [f"data.hard_negatives={hn}"] for task, hn in CROSS.items()} if cross_eval else {"all": []}
            merged: dict = {}
            for task, extra in variants.items():
                tag = f"{name}-s{seed}" + ("" if task == "all" else f"-{task}")
                cfg = load_config(path, [*overrides, f"run.seed={seed}", f"run.name={tag}", *extra])
                echo(f"== {tag}")
                summary = pretrain(cfg, echo=lambda line: None)
                entry["run_dirs"].append(summary["run_dir"])
                bench = summary["bench"]
                if task == "all":
                    merged = dict(bench)
                else:
                    merged[task] = bench.get(task, {})
                    merged.setdefault("dynamics", bench.get("dynamics", {}))
            entry["runs"].append(merged)
            entry["seeds"].append(seed)
    return results


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std of finite values; std is None for a single value, both NaN for none."""
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: list, seeds: list) -> str:
    """``mean ± std`` over the finite values, then which seeds gave NaN or nothing (never dropped unseen)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    failed = [str(seed) for v, seed in zip(values, seeds) if v is None or not math.isfinite(v)]
    mean, std = _mean_std(finite)
    text = "" if not finite else f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"
    if failed:
        note = f"NaN x{len(failed)}: seed{'s' if len(failed) > 1 else ''} {', '.join(failed)}"
        text = f"{text} ({note})" if text else note
    return text


def ablation_table(results: dict, columns: Sequence[tuple[str, str]]) -> str:
    """Markdown: one row per config, each cell ``mean ± sample std`` over the seeds with a finite value (one value:
    no std), followed by the count and the seeds of runs that gave NaN or no value; n in the last column."""
    header = ["Config", *[f"{task.capitalize()} {metric}" for task, metric in columns], "seeds"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for name, entry in results.items():
        seeds = entry.get("seeds") or list(range(len(entry["runs"])))
        cells = [_cell([run.get(task, {}).get(metric) for run in entry["runs"]], seeds) for task, metric in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(entry['runs'])} |")
    return "\n".join(lines)
