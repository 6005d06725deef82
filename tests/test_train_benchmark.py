"""The training benchmark (instraction/train/benchmark.py): Ray Train and the plain loops take turns, segment by
segment, and the ratio is summed over the rounds after the warmup."""

from __future__ import annotations

import pytest

from instraction.config import load_config, to_yaml
from instraction.train import benchmark as tb
from train_helpers import TINY_OVERRIDES


def test_summary_sums_the_rounds_after_the_warmup_and_picks_the_faster_plain_loop():
    # 3 rounds of 2 steps, global batch 8 (2 workers x 4): the first round is warmup.
    run = {"step_times": [9.0, 9.0, 0.1, 0.1, 0.2, 0.2],
           "plain_times": {"1_thread": [[9.0, 9.0], [0.1, 0.1], [0.1, 0.1]],
                           "2_threads": [[9.0, 9.0], [0.2, 0.2], [0.2, 0.2]],
                           "share": [[9.0, 9.0], [0.05, 0.05], [0.05, 0.05]]},
           "ray_cpu_while_held": [0.5, 0.02, 0.04]}
    s = tb.summarise(run, global_batch=8, share_batch=4, segment=2, warmup=2)
    assert s["rounds"] == 2 and s["best_plain"] == "1_thread"
    assert s["ray_samples_per_s"] == pytest.approx(8 * 4 / 0.6)
    assert s["plain_samples_per_s"] == pytest.approx(8 * 4 / 0.4)
    assert s["ratio"] == pytest.approx(0.4 / 0.6)
    assert s["round_ratios"] == pytest.approx([1.0, 0.5])
    assert s["parallel_efficiency"] == pytest.approx((8 * 4 / 0.6) / (2 * 4 * 4 / 0.2))
    assert s["ray_cpu_while_held"] == pytest.approx(0.03)
    # warmup is counted in whole segments: 3 steps drop two rounds
    assert tb.summarise(run, 8, 4, 2, warmup=3)["round_ratios"] == pytest.approx([0.5])
    with pytest.raises(ValueError, match="no round is left"):
        tb.summarise(run, 8, 4, 2, warmup=6)
    # a Ray step redone (a restart) or lost would shift every round after it: refused
    with pytest.raises(ValueError, match="redone or lost"):
        tb.summarise({**run, "step_times": run["step_times"] + [0.1]}, 8, 4, 2, warmup=2)


@pytest.mark.integration
def test_workers_wait_while_the_plain_loops_run_and_every_step_is_timed(ray_local, tmp_path):
    cfg = load_config(None, [*TINY_OVERRIDES, "train.batch_size=4", "train.max_steps=6", "train.checkpoint_every=6",
                             "train.report_every=6", "train.log_every=1", "train.zero_stage=0",
                             "train.cpus_per_worker=0.5", "train.export_weights=false", f"run.dir={tmp_path}"])
    rows = tb.make_rows(cfg, 8 * 7)
    plains = {"1_thread": tb.PlainProcess(to_yaml(cfg), rows, 8, 1), "share": tb.PlainProcess(to_yaml(cfg), rows, 4, 1),
              "independent": [tb.PlainProcess(to_yaml(cfg), rows, 4, 1) for _ in range(2)]}
    try:
        run = tb.interleaved(cfg, rows, plains, segment=2)
    finally:
        for plain in tb.each_process(plains):
            plain.close()
    assert len(run["step_times"]) == 6 and all(t > 0 for t in run["step_times"])
    assert [len(seg) for seg in run["plain_times"]["1_thread"]] == [2, 2, 2]
    assert [len(seg) for seg in run["plain_times"]["share"]] == [2, 2, 2]
    # two processes side by side are charged the slower one's mean step
    assert [len(seg) for seg in run["plain_times"]["independent"]] == [2, 2, 2]
    assert all(seg[0] == seg[1] > 0 for seg in run["plain_times"]["independent"])
    assert len(run["plain_windows"]) == len(run["ray_cpu_while_held"]) == 3
    for r, (start, end) in enumerate(run["plain_windows"], start=1):
        gate = run["gate"][r]
        assert gate["all_arrived"] <= start < end <= gate["released"]
        # no training step ended while the plain loops ran
        assert not [t for t in run["step_ends"] if start < t < end], (r, start, end, run["step_ends"])
    # the steps of each segment ended before its plain window, the next segment's after it
    for r, (start, end) in enumerate(run["plain_windows"]):
        assert max(run["step_ends"][2 * r:2 * r + 2]) <= start + 0.01
        assert min(run["step_ends"][2 * r + 2:2 * r + 4], default=end) >= end - 0.01
    assert 0 <= min(run["ray_cpu_while_held"]) and max(run["ray_cpu_while_held"]) < 1
    summary = tb.summarise(run, 8, 4, 2, warmup=2)
    assert summary["rounds"] == 2 and summary["ray_vs_independent"] > 0
    assert summary["ray_cpu_while_held_by_process"]  # Ray's processes were seen while the workers waited


@pytest.mark.integration
def test_a_failing_reference_ends_the_held_run_and_frees_its_cpus(ray_local, tmp_path):
    import time

    cfg = load_config(None, [*TINY_OVERRIDES, "train.batch_size=4", "train.max_steps=4", "train.checkpoint_every=4",
                             "train.report_every=4", "train.zero_stage=0", "train.cpus_per_worker=0.5",
                             "train.export_weights=false", f"run.dir={tmp_path}"])
    rows = tb.make_rows(cfg, 8 * 5)
    total = ray_local.cluster_resources()["CPU"]
    broken = tb.PlainProcess(to_yaml(cfg), rows, len(rows) + 1, 1)  # a batch larger than the rows: fails its segment
    try:
        with pytest.raises(ZeroDivisionError):
            tb.interleaved(cfg, rows, {"share": broken}, segment=2)
    finally:
        broken.close()
    deadline = time.time() + 60
    while ray_local.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0) == total  # no worker is left waiting at the gate
