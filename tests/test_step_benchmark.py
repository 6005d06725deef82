"""The step benchmark (instraction/train/step_benchmark.py) at the embedded default's shape on the CPU: the same
code path the GPU acceptance run (jobs/gpu_check.sh) takes at paper scale, including the learning check.

    python -m pytest -q tests/test_step_benchmark.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_step_benchmark_measures_and_learns(tmp_path):
    out = tmp_path / "step.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "jobs/benchmark.py", "step", "--tiny", "--learn", "40", "--warmup", "1",
                           "--steps", "3", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["configs"]
    assert row["status"] == "ok" and row["finite"]
    assert row["step_s"] > 0 and row["clips_per_s"] == row["batch"] / row["step_s"]
    assert row["step_tflop"] > 0
    assert {"video tower", "text tower: negatives", "perceiver: student", "perceiver: teacher",
            "decoder + MAM loss", "DTW-Align loss (soft-DTW)"} <= set(result["components"])
    assert all(v > 0 for v in result["components"].values())
    learning = result["learning"]
    assert learning["passed"] and learning["loss_last"] < 0.5 * learning["loss_first"]
    # every progress line carries a timestamp (a silent GPU run tells nothing)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert sum(line.startswith("[") for line in lines) >= 0.8 * len(lines)
    assert "learning check PASS" in proc.stdout
