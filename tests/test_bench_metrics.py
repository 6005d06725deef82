"""InstrAct Bench metrics on hand-built cases: perfect, reversed, all ties, NaN, pool weighting."""

import numpy as np
import pytest
import torch

from instraction.bench.metrics import answer_ranks, mcq_metrics, pooled_retrieval_metrics


def test_perfect_scorer_ranks_first():
    scores = np.eye(10)[:4]  # answer i scores 1, others 0
    m = mcq_metrics(scores, np.arange(4))
    assert m == {"R@1": 100.0, "R@5": 100.0, "ACC": 100.0, "MedR": 1.0, "MeanR": 1.0}


def test_reversed_scorer_ranks_last():
    scores = -np.eye(10)[:3]
    m = mcq_metrics(scores, np.arange(3))
    assert m["R@1"] == 0.0 and m["R@5"] == 0.0 and m["MedR"] == 10.0 and m["MeanR"] == 10.0


def test_all_ties_count_against_the_model():
    m = mcq_metrics(np.zeros((5, 10)), np.zeros(5, dtype=int))
    assert m["R@1"] == 0.0 and m["MedR"] == 10.0
    # a constant scorer is never better than a random one
    rng = np.random.default_rng(0)
    rand = mcq_metrics(rng.normal(size=(2000, 10)), rng.integers(0, 10, 2000))
    assert rand["MeanR"] < m["MeanR"] and 5 < rand["R@1"] < 15


def test_partial_ties_and_torch_inputs():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.5, 2.0, 2.0]])
    ranks = answer_ranks(scores, torch.tensor([0, 2]))
    assert ranks.tolist() == [2, 2]
    m = mcq_metrics(scores, torch.tensor([0, 1]))
    assert m["MeanR"] == 2.0 and isinstance(m["R@1"], float)


def test_nan_score_is_worst():
    scores = np.array([[np.nan, 0.1, 0.2]])
    assert answer_ranks(scores, np.array([0])).tolist() == [3]
    assert answer_ranks(scores, np.array([2])).tolist() == [1]


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        mcq_metrics(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError):
        mcq_metrics(np.zeros((2, 3)), np.array([0, 3]))


def test_pooled_perfect_and_direction_specific():
    perfect = pooled_retrieval_metrics([np.eye(4), np.eye(12)])
    assert all(v == 100.0 for v in perfect.values())
    assert set(perfect) == {f"{d}_R@{k}" for d in ("T2V", "V2T", "Mean") for k in (1, 5, 10)}
    # every text prefers video 0: T2V right only for row 0; V2T (columns) is perfect for column 0 only... build it
    sim = np.full((3, 3), 0.0)
    sim[:, 0] = 1.0
    sim[np.arange(3), np.arange(3)] += 0.5  # row 0 -> col 0 wins; rows 1, 2 prefer col 0 over their own
    m = pooled_retrieval_metrics([sim])
    assert m["T2V_R@1"] == pytest.approx(100 / 3)
    # columns: col 0's best row is row 0 (1.5); col 1 -> row 1 (0.5 vs 0); col 2 -> row 2
    assert m["V2T_R@1"] == 100.0
    assert m["Mean_R@1"] == pytest.approx((100 / 3 + 100) / 2)


def test_pools_are_weighted_by_clip_count():
    good = np.eye(8)  # 8 clips, all right
    bad = -np.eye(2)  # 2 clips, all wrong at R@1
    m = pooled_retrieval_metrics([good, bad])
    assert m["T2V_R@1"] == pytest.approx(80.0)  # 8 of 10 clips, not the unweighted 50
    with pytest.raises(ValueError):
        pooled_retrieval_metrics([np.zeros((2, 3))])
