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
        entry = results.setdefault(name, {"runs": [], "run_dirs": []})
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
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def ablation_table(results: dict, columns: Sequence[tuple[str, str]]) -> str:
    """Markdown: one row per config, each cell ``mean ± sample std`` over seeds (n in the last column)."""
    header = ["Config", *[f"{task.capitalize()} {metric}" for task, metric in columns], "seeds"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for name, entry in results.items():
        cells = []
        for task, metric in columns:
            mean, std = _mean_std([run.get(task, {}).get(metric, float("nan")) for run in entry["runs"]])
            cells.append(f"{mean:.1f} ± {std:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(entry['runs'])} |")
    return "\n".join(lines)
