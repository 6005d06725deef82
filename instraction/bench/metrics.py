"""InstrAct Bench metrics (paper Sec. 5; names and tie rule fixed by docs/ARCHITECTURE.md).

Rank of the answer = 1 + number of *other* candidates scoring >= the answer: ties count against the model, so a
constant scorer gets the worst rank (C), never a lucky 1. NaN scores count as the worst possible score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

KS_MCQ = (1, 5)
KS_POOL = (1, 5, 10)


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def answer_ranks(scores, answer) -> np.ndarray:
    """scores [Q,C], answer [Q] (index of the correct candidate) -> 1-based ranks [Q] (ties against the model)."""
    s = _as_numpy(scores)
    a = _as_numpy(answer).astype(np.int64)
    if s.ndim != 2 or a.shape != (s.shape[0],):
        raise ValueError(f"scores must be [Q,C] and answer [Q]; got {s.shape} and {a.shape}")
    if s.shape[0] and (a.min() < 0 or a.max() >= s.shape[1]):
        raise ValueError(f"answer indices must lie in [0, {s.shape[1]})")
    s = np.where(np.isnan(s), -np.inf, s)
    rows = np.arange(s.shape[0])
    correct = s[rows, a]
    ge = s >= correct[:, None]
    ge[rows, a] = False
    # a NaN answer (now -inf) ties with every -inf/NaN other and loses to the rest: still >= counts it worst
    return 1 + ge.sum(axis=1)


def mcq_metrics(scores, answer) -> dict[str, float]:
    """Multiple-choice metrics: "R@1", "R@5", "ACC" (percent), "MedR", "MeanR" (1-based ranks).

    scores: [Q,C] (numpy or torch), higher = better; answer: [Q] index of the true caption.
    """
    ranks = answer_ranks(scores, answer)
    if ranks.size == 0:
        return {"R@1": float("nan"), "R@5": float("nan"), "ACC": float("nan"), "MedR": float("nan"), "MeanR": float("nan")}
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in KS_MCQ}
    out["ACC"] = out["R@1"]
    out["MedR"] = float(np.median(ranks))
    out["MeanR"] = float(np.mean(ranks))
    return out


def pooled_retrieval_metrics(pools: Sequence) -> dict[str, float]:
    """InstrAct-Dynamics retrieval within object pools.

    pools: list of square similarity matrices [n_p, n_p] (rows texts, columns videos, diagonal correct).
    Returns "T2V_R@k", "V2T_R@k", "Mean_R@k" for k in 1, 5, 10 (percent), each averaged over pools weighted by
    their clip count n_p (equivalently: averaged over all clips).
    """
    per_clip: dict[str, list[np.ndarray]] = {"T2V": [], "V2T": []}
    for pool in pools:
        sim = _as_numpy(pool)
        if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"each pool must be a square [n,n] matrix; got {sim.shape}")
        diag = np.arange(sim.shape[0])
        per_clip["T2V"].append(answer_ranks(sim, diag))  # text row -> its video column
        per_clip["V2T"].append(answer_ranks(sim.T, diag))  # video column -> its text row
    out: dict[str, float] = {}
    for direction, ranks in per_clip.items():
        r = np.concatenate(ranks) if ranks else np.zeros(0)
        for k in KS_POOL:
            out[f"{direction}_R@{k}"] = float(100.0 * np.mean(r <= k)) if r.size else float("nan")
    for k in KS_POOL:
        out[f"Mean_R@{k}"] = (out[f"T2V_R@{k}"] + out[f"V2T_R@{k}"]) / 2.0
    return out
