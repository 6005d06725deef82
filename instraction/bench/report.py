"""Bench results as Markdown tables shaped like the paper's (Table 1: Semantic + Logic; Table 2: Dynamics), with rows
for the temporal controls and the temporal gap, a side-by-side comparison table, and flat MLflow metric names.

    md = tables_markdown({"InstrAction": results})                 # Tables 1, 2, alignment, counts
    md = compare_table({"trained": r1, "untrained": r0}, controls=("static",))
    mlflow_metrics = flatten_metrics(results)                       # {"bench/semantic/R_at_1": 28.1, ...}

``results`` is what :func:`instraction.bench.evaluate.evaluate` returns (or its JSON); a missing or NaN value prints
as "–".
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from instraction import tracking

CONTROL_LABELS = {
    "reversed": "frames reversed",
    "shuffled": "frames shuffled",
    "static": "static (1 random frame)",
}
DASH = "–"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return DASH
    return f"{value:.{digits}f}"


def signed(value: Any, digits: int = 1) -> str:
    return DASH if fmt(value) == DASH else f"{value:+.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    return "\n".join(lines + [_row(r) for r in rows])


def _get(results: Mapping, *path: str) -> Any:
    node: Any = results
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _variants(name: str, results: Mapping, controls: bool | Sequence[str]) -> list[tuple[str, Mapping]]:
    """(label, metrics by task) for the model and, when asked, each of its control runs."""
    out = [(name, results)]
    wanted = list(results.get("controls", {})) if controls is True else list(controls or [])
    for c in wanted:
        if c in results.get("controls", {}):
            out.append((f"{name} · {CONTROL_LABELS.get(c, c)}", results["controls"][c]))
    return out


def table1(results_by_method: Mapping[str, Mapping], controls: bool | Sequence[str] = True) -> str:
    """Table 1: Method | Semantic R@1 (%) R@5 (%) MR (↓) | Logic ACC (%), plus control, gap and chance rows."""
    header = ["Method", "Semantic R@1 (%)", "Semantic R@5 (%)", "Semantic MR (↓)", "Logic ACC (%)"]
    rows = []
    for name, results in results_by_method.items():
        for label, m in _variants(name, results, controls):
            rows.append([label, fmt(_get(m, "semantic", "R@1")), fmt(_get(m, "semantic", "R@5")),
                         fmt(_get(m, "semantic", "MedR")), fmt(_get(m, "logic", "ACC"))])
        if "temporal_gap" in results:
            gap = results["temporal_gap"]
            rows.append([f"{name} · temporal gap (normal − shuffled)", signed(gap.get("semantic")), DASH, DASH,
                         signed(gap.get("logic"))])
    chance = _first(results_by_method, "chance")
    if chance:
        rows.append(["chance", fmt(_get(chance, "semantic", "R@1")), fmt(_get(chance, "semantic", "R@5")), DASH,
                     fmt(_get(chance, "logic", "ACC"))])
    return _table(header, rows)


def table2(results_by_method: Mapping[str, Mapping], controls: bool | Sequence[str] = True) -> str:
    """Table 2: Method | R@1, R@5, R@10 x T2V / V2T / Mean (%), plus control, gap (Mean R@1) and chance rows."""
    cols = [(k, d) for k in (1, 5, 10) for d in ("T2V", "V2T", "Mean")]
    header = ["Method"] + [f"R@{k} {d}" for k, d in cols]
    rows = []
    for name, results in results_by_method.items():
        for label, m in _variants(name, results, controls):
            rows.append([label] + [fmt(_get(m, "dynamics", f"{d}_R@{k}"), 2) for k, d in cols])
        if "temporal_gap" in results:
            gap = signed(results["temporal_gap"].get("dynamics"), 2)
            rows.append([f"{name} · temporal gap (normal − shuffled)"] + [gap if (k, d) == (1, "Mean") else DASH
                                                                          for k, d in cols])
    chance = _first(results_by_method, "chance")
    if chance and "dynamics" in chance:
        rows.append(["chance"] + [fmt(_get(chance, "dynamics", f"{d}_R@{k}"), 2) for k, d in cols])
    return _table(header, rows)


def compare_table(results_by_method: Mapping[str, Mapping], controls: Sequence[str] = ("static",)) -> str:
    """One row per method (and per requested control of each): the headline numbers of all three tasks and the
    temporal gaps. The main job shows trained vs untrained vs their static (one random frame) baselines with it."""
    header = ["Method", "Sem R@1", "Sem R@5", "Sem MR (↓)", "Logic ACC", "Dyn Mean R@1", "Dyn Mean R@5",
              "Dyn Mean R@10", "Gap Sem", "Gap Logic", "Gap Dyn"]
    rows = []
    for name, results in results_by_method.items():
        gap = results.get("temporal_gap", {})
        for i, (label, m) in enumerate(_variants(name, results, controls)):
            gaps = [signed(gap.get(t)) for t in ("semantic", "logic", "dynamics")] if i == 0 else [DASH] * 3
            rows.append([label, fmt(_get(m, "semantic", "R@1")), fmt(_get(m, "semantic", "R@5")),
                         fmt(_get(m, "semantic", "MedR")), fmt(_get(m, "logic", "ACC")),
                         fmt(_get(m, "dynamics", "Mean_R@1")), fmt(_get(m, "dynamics", "Mean_R@5")),
                         fmt(_get(m, "dynamics", "Mean_R@10")), *gaps])
    chance = _first(results_by_method, "chance")
    if chance:
        rows.append(["chance", fmt(_get(chance, "semantic", "R@1")), fmt(_get(chance, "semantic", "R@5")), DASH,
                     fmt(_get(chance, "logic", "ACC")), fmt(_get(chance, "dynamics", "Mean_R@1")),
                     fmt(_get(chance, "dynamics", "Mean_R@5")), fmt(_get(chance, "dynamics", "Mean_R@10")),
                     DASH, DASH, DASH])
    return _table(header, rows)


def compositional_table(results_by_method: Mapping[str, Mapping], controls: bool | Sequence[str] = ("static",)) -> str:
    """Seen vs unseen verb-object pairs: Semantic R@1 and Logic ACC on the questions whose clip has only pairs seen
    in training, and on those with at least one unseen pair (empty when no result carries the split)."""
    header = ["Method", "Sem R@1 seen", "Sem R@1 unseen", "Logic ACC seen", "Logic ACC unseen",
              "Sem questions seen / unseen", "Logic questions seen / unseen"]
    rows = []
    for name, results in results_by_method.items():
        for label, m in _variants(name, results, controls):
            c = m.get("compositional")
            if not c:
                continue
            count = lambda t: f"{_get(c, t, 'questions', 'seen') or 0} / {_get(c, t, 'questions', 'unseen') or 0}"  # noqa: E731
            rows.append([label, fmt(_get(c, "semantic", "seen", "R@1")), fmt(_get(c, "semantic", "unseen", "R@1")),
                         fmt(_get(c, "logic", "seen", "ACC")), fmt(_get(c, "logic", "unseen", "ACC")),
                         count("semantic"), count("logic")])
    return _table(header, rows) if rows else ""


def alignment_table(results_by_method: Mapping[str, Mapping]) -> str:
    """Fig. 8 as a table: normalised DTW alignment cost of raw frame embeddings vs action latents (lower = better)."""
    rows = []
    for name, results in results_by_method.items():
        a = results.get("alignment")
        if a:
            rows.append([name, fmt(a.get("raw_cost"), 3), fmt(a.get("latents_cost"), 3), str(a.get("clips", 0))])
    if not rows:
        return ""
    return _table(["Method", "Raw embeddings (↓)", "Action latents (↓)", "Clips"], rows)


def _first(results_by_method: Mapping[str, Mapping], key: str) -> Any:
    return next((r[key] for r in results_by_method.values() if r.get(key)), None)


def counts_text(results: Mapping) -> str:
    """One line per task: what was scored and what was skipped (and why)."""
    c = results.get("counts", {})
    lines = []
    for task in ("semantic", "logic"):
        t = c.get(task, {})
        lines.append(f"- {task}: {t.get('scored', 0)}/{t.get('questions', 0)} questions scored "
                     f"({t.get('skipped_missing_video', 0)} skipped: no video)")
    d = c.get("dynamics", {})
    skipped = ", ".join(f"{k[len('skipped_'):]}: {v}" for k, v in d.items() if k.startswith("skipped_")) or "none"
    lines.append(f"- dynamics: {d.get('scored', 0)}/{d.get('clips', 0)} clips in {d.get('pools', 0)} pools "
                 f"(skipped: {skipped})")
    v = c.get("videos", {})
    failed = ", ".join(f"{k}: {n}" for k, n in v.get("failed", {}).items()) or "none"
    lines.append(f"- videos: {v.get('loaded', 0)}/{v.get('needed', 0)} loaded (failed: {failed})")
    return "\n".join(lines)


def tables_markdown(results_by_method: Mapping[str, Mapping], title: str = "InstrAct Bench") -> str:
    """Tables 1 and 2 (with control rows and the temporal gap), the Fig. 8 alignment costs and the counts."""
    parts = [f"# {title}", "", "## Table 1 — InstrAct-Semantic and InstrAct-Logic", "", table1(results_by_method),
             "", "## Table 2 — InstrAct-Dynamics (clip-weighted Recall@K, %)", "", table2(results_by_method)]
    cats = {name: r.get("dynamics_by_category") for name, r in results_by_method.items() if r.get("dynamics_by_category")}
    if cats:
        rows = [[name, cat, str(m.get("pools", 0)), str(m.get("clips", 0)), fmt(m.get("Mean_R@1"), 2),
                 fmt(m.get("Mean_R@5"), 2), fmt(m.get("Mean_R@10"), 2)]
                for name, by_cat in cats.items() for cat, m in by_cat.items()]
        parts += ["", "### Dynamics by pool category", "",
                  _table(["Method", "Category", "Pools", "Clips", "Mean R@1", "Mean R@5", "Mean R@10"], rows)]
    comp = compositional_table(results_by_method, controls=True)
    if comp:
        parts += ["", "## Compositional split — verb-object pairs seen in training vs unseen", "", comp]
    align = alignment_table(results_by_method)
    if align:
        parts += ["", "## Alignment cost (Fig. 8; normalised DTW cost, lower is better)", "", align]
    for name, results in results_by_method.items():
        parts += ["", f"## Counts — {name}", "", counts_text(results)]
    return "\n".join(parts) + "\n"


_NOT_METRICS = {"examples", "meta", "controls_seed"}


def flatten_metrics(results: Mapping, prefix: str = "bench") -> dict[str, float]:
    """Every finite number of ``results`` under ``prefix/...`` (``meta`` and the alignment examples left out),
    MLflow-safe names: ``bench/semantic/R_at_1``, ``bench/controls/shuffled/logic/ACC``, ``bench/temporal_gap/dynamics``..."""
    return tracking.flatten_metrics(results, prefix, skip=_NOT_METRICS)


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> Python, NaN/inf -> None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(results: Mapping) -> str:
    return json.dumps(to_jsonable(results), indent=2, allow_nan=False)


def log_to_mlflow(cfg, out_dir: str, results: Mapping, files: Sequence[str], plots: Sequence[str] = (),
                  tags: Mapping[str, Any] | None = None) -> str:
    """One MLflow run per evaluation output directory (reopened when that directory is evaluated again): the config
    as params, ``tags``, every metric of ``results`` (:func:`flatten_metrics`; the Fig. 6 pool curve as the history
    ``bench/pool_curve/Mean_R_at_1`` with step = pool size), ``files`` and ``plots/``. The store is
    ``MLFLOW_TRACKING_URI``, else ``tracking.tracking_uri``, else ``sqlite:///<run.dir>/mlflow.db``. Returns the run id."""
    import time

    from mlflow import MlflowClient

    run_id = tracking.open_run(cfg, out_dir)
    client = MlflowClient(tracking_uri=tracking.tracking_uri(cfg))  # one client: each costs a store connection
    now = int(time.time() * 1000)
    metrics = tracking.metrics_at(flatten_metrics(results), 0, now)
    curve = results.get("pool_curve") or {}
    name = tracking.metric_name("bench", "pool_curve", "Mean_R@1")
    for size, v in zip(curve.get("sizes", []), curve.get("Mean_R@1", [])):
        if v is not None and math.isfinite(v):
            metrics += tracking.metrics_at({name: v}, int(size), now)
    try:
        tracking.log_batch(client, run_id, metrics, tags)
        for path in files:
            client.log_artifact(run_id, path)
        for path in plots:
            client.log_artifact(run_id, path, artifact_path="plots")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
