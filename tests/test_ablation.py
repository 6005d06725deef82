"""The ablation: mean ± sample std over seeds (NaN-safe), and jobs/ablate.py end to end on a tiny SynthKitchen."""

import json
import math
from pathlib import Path

import pytest

from instraction.ablation import _mean_std, ablation_table

ROOT = Path(__file__).resolve().parents[1]


def test_mean_and_sample_std():
    mean, std = _mean_std([40.0, 50.0, 60.0])
    assert mean == 50.0 and math.isclose(std, 10.0)
    assert _mean_std([7.0]) == (7.0, None)
    assert all(math.isnan(x) for x in _mean_std([]))


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
    assert "| table4_both | 70.0 | NaN x1: seed 0 | 1 |" in lines


def test_nan_runs_are_shown_with_their_seeds_not_dropped():
    """A diverged seed stays visible: the mean is over the finite runs and the cell names the NaN seeds."""
    nan = float("nan")
    results = {
        "mam": {"seeds": [0, 1, 2], "runs": [{"semantic": {"R@1": 40.0}}, {"semantic": {"R@1": nan}},
                                             {"semantic": {"R@1": 60.0}}]},
        "dtw": {"seeds": [3, 4], "runs": [{"semantic": {"R@1": nan}}, {"semantic": {"R@1": 55.0}}]},
        "both": {"seeds": [0, 1], "runs": [{"semantic": {"R@1": nan}}, {"semantic": {"R@1": float("inf")}}]},
    }
    lines = ablation_table(results, [("semantic", "R@1")]).splitlines()
    assert "| mam | 50.0 ± 14.1 (NaN x1: seed 1) | 3 |" in lines
    assert "| dtw | 55.0 (NaN x1: seed 3) | 2 |" in lines
    assert "| both | NaN x2: seeds 0, 1 | 2 |" in lines


@pytest.mark.integration
def test_ablate_job_trains_every_config_per_seed_and_writes_the_table(tmp_path, ray_local):
    """jobs/ablate.py end to end on a tiny SynthKitchen: each config x seed is its own run (its own seed and loss
    weights in the run's config.yaml), evaluated on the same bench, and the table has one row per config."""
    import sys

    from omegaconf import OmegaConf

    from train_helpers import TINY_DATA, TINY_OVERRIDES

    sys.path.insert(0, str(ROOT / "jobs"))
    import ablate

    configs = [str(ROOT / "configs/ablations/table4_hn_only.yaml"), str(ROOT / "configs/ablations/table4_both.yaml")]
    overrides = [*TINY_OVERRIDES, *TINY_DATA, "train.max_steps=3", "train.checkpoint_every=100",
                 "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5", f"run.dir={tmp_path}/runs",
                 f"data.shards={tmp_path}/shards", f"data.annotations={tmp_path}/ann",
                 "data.make_synthetic=true"]
    results = ablate.main(["--configs", *configs, "--seeds", "0", "1", *overrides])

    assert list(results) == ["table4_hn_only", "table4_both"]
    for name, weights in (("table4_hn_only", (0.0, 0.0, 0.0)), ("table4_both", (1.0, 0.5, 0.1))):
        entry = results[name]
        assert len(entry["runs"]) == 2 and len(set(entry["run_dirs"])) == 2 and entry["seeds"] == [0, 1]
        for seed, run, run_dir in zip((0, 1), entry["runs"], entry["run_dirs"]):
            assert 0.0 <= run["semantic"]["R@1"] <= 100.0 and 0.0 <= run["logic"]["ACC"] <= 100.0
            cfg = OmegaConf.load(f"{run_dir}/config.yaml")
            assert cfg.run.seed == seed
            assert (cfg.loss.distill_weight, cfg.loss.mam_weight, cfg.loss.dtw_weight) == weights
    (out,) = (tmp_path / "runs").glob("ablation-*")
    table = (out / "table.md").read_text()
    assert table.startswith("| Config | Semantic R@1 |")
    assert sum(line.startswith("| table4_") and line.endswith("| 2 |") for line in table.splitlines()) == 2
    assert json.loads((out / "results.json").read_text()).keys() == results.keys()
