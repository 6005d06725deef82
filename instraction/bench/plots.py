"""Figures of the paper's analysis, drawn from :func:`instraction.bench.evaluate.evaluate` results (PNG, matplotlib).

    paths = write_plots({"InstrAction": results, "untrained": baseline}, "out/plots")

* ``pool_size.png`` (Fig. 6): Dynamics Mean R@1 vs pool size, one line per method, chance dashed.
* ``alignment_heatmaps[_<method>].png`` (Fig. 7): for a few held-out clips, similarity of the raw frame embeddings (left) and of
  the action latents (right) to the verb phrases, with the DTW path overlaid.
* ``alignment_cost.png`` (Fig. 8): normalised DTW alignment cost, raw vs latents (lower = better).

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot global state), so plotting is safe
in any thread and never opens a window.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: str | Path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return str(path)


def plot_pool_size(results_by_method: Mapping[str, Mapping], path: str | Path) -> str | None:
    """Fig. 6: Mean R@1 (%) against pool size (log2 axis). None when no method has a pool curve."""
    curves = {name: r["pool_curve"] for name, r in results_by_method.items() if r.get("pool_curve", {}).get("sizes")}
    if not curves:
        return None
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    sizes: list[int] = []
    for name, curve in curves.items():
        ax.plot(curve["sizes"], [np.nan if v is None else v for v in curve["Mean_R@1"]], marker="o", label=name)
        sizes = max(sizes, list(curve["sizes"]), key=len)
    ax.plot(sizes, [100.0 / s for s in sizes], "k--", linewidth=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("pool size (videos per object pool)")
    ax.set_ylabel("Mean R@1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("InstrAct-Dynamics: recall vs pool size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _heatmap(ax, entry: Mapping, phrases: list[str], ylabel: str, title: str):
    sim = np.asarray(entry["sim"], dtype=float)  # [N visual, V phrases]
    im = ax.imshow(sim, aspect="auto", cmap="viridis", interpolation="nearest")
    path = np.asarray(entry["path"])
    ax.plot(path[:, 1], path[:, 0], color="white", linewidth=1.5, marker=".", markersize=4)
    ax.set_xticks(range(len(phrases)), phrases, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(sim.shape[0]))
    ax.tick_params(axis="y", labelsize=6)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"{title}\ncost {entry['cost']:.3f}", fontsize=8)
    return im


def plot_alignment_heatmaps(alignment: Mapping, path: str | Path, method: str = "") -> str | None:
    """Fig. 7: one row per example clip; left raw frames -> phrases, right latents -> phrases (when present)."""
    examples = (alignment or {}).get("examples") or []
    if not examples:
        return None
    kinds = [k for k in ("raw", "latents") if k in examples[0]]
    fig = _figure(4.2 * len(kinds), 2.9 * len(examples))
    axes = fig.subplots(len(examples), len(kinds), squeeze=False)
    labels = {"raw": ("frame", "Raw frames → actions"), "latents": ("action latent", "Latents → actions")}
    for row, entry in enumerate(examples):
        for col, kind in enumerate(kinds):
            ylabel, title = labels[kind]
            im = _heatmap(axes[row][col], entry[kind], list(entry["phrases"]), ylabel, f"{entry['key']}: {title}")
            fig.colorbar(im, ax=axes[row][col], shrink=0.8)
    fig.suptitle(f"DTW alignment to the verb phrases{f' — {method}' if method else ''}", fontsize=10)
    return _save(fig, path)


def plot_alignment_cost(results_by_method: Mapping[str, Mapping], path: str | Path) -> str | None:
    """Fig. 8: normalised DTW cost of raw embeddings vs action latents, grouped by method (lower = better)."""
    rows = {name: r["alignment"] for name, r in results_by_method.items() if r.get("alignment", {}).get("clips")}
    if not rows:
        return None
    kinds = [("raw_cost", "Raw embeddings"), ("latents_cost", "Action latents")]
    fig = _figure(1.8 + 1.6 * len(rows), 3.6)
    ax = fig.add_subplot()
    width = 0.38
    x = np.arange(len(rows))
    for i, (key, label) in enumerate(kinds):
        values = [a.get(key) for a in rows.values()]
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (i - 0.5) * width, heights, width, label=label)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.3f}" for v in values], fontsize=7)
    ax.set_xticks(x, [f"{n}\n({a['clips']} clips)" for n, a in rows.items()], fontsize=8)
    ax.set_ylabel("normalised DTW cost (↓)")
    ax.set_ylim(0, max(1.0, np.nanmax([a.get(k) or 0 for a in rows.values() for k, _ in kinds]) * 1.15))
    ax.set_title("Alignment cost to the verb phrases")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(results_by_method: Mapping[str, Mapping], out_dir: str | Path) -> list[str]:
    """Every figure the results support, under ``out_dir``; returns the PNG paths written."""
    out = Path(out_dir)
    paths = [plot_pool_size(results_by_method, out / "pool_size.png"),
             plot_alignment_cost(results_by_method, out / "alignment_cost.png")]
    for name, results in results_by_method.items():
        suffix = "" if len(results_by_method) == 1 else "_" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x")
        paths.append(plot_alignment_heatmaps(results.get("alignment") or {}, out / f"alignment_heatmaps{suffix}.png",
                                             name))
    return [p for p in paths if p]
