"""The ablation table: mean ± sample std over seeds, NaN-safe (the runs themselves are exercised by the e2e test)."""

import math

from instraction.ablation import _mean_std, ablation_table


def test_mean_and_sample_std():
    mean, std = _mean_std([40.0, 50.0, 60.0])
    assert mean == 50.0 and math.isclose(std, 10.0)
    assert _mean_std([7.0]) == (7.0, 0.0)
    assert all(math.isnan(x) for x in _mean_std([float("nan")]))


def test_table_rows_and_cells():
    results = {
        "table4_hn_only": {"runs": [{"semantic": {"R@1": 40.0}, "logic": {"ACC": 30.0}},
                                    {"semantic": {"R@1": 60.0}, "logic": {"ACC": 50.0}}]},
        "table4_both": {"runs": [{"semantic": {"R@1": 70.0}, "logic": {}}]},
    }
    table = ablation_table(results, [("semantic", "R@1"), ("logic", "ACC")])
    lines = table.splitlines()
    assert lines[0] == "| Config | Semantic R@1 | Logic ACC | seeds |"
    assert "| table4_hn_only | 50.0 ± 14.1 | 40.0 ± 14.1 | 2 |" in lines
    assert "| table4_both | 70.0 ± 0.0 | nan ± nan | 1 |" in lines
