"""Learning proof, short config: the main job end to end (SynthKitchen -> rules curation -> held-out InstrAct Bench
-> Ray Train + DeepSpeed on 2 CPU workers -> evaluation) must learn motion, not objects.

    python -m pytest tests/test_learning_proof.py -q          # ~6 minutes on 2 cores

The default config (its 32 shards) with fewer steps (STEPS instead of 1000). What it asserts, on the held-out
bench (source videos never seen in training):
  * InstrAct-Semantic R@1 of the trained model is at least SEMANTIC_MIN and at least twice that of the same
    model fed one random frame repeated (the static control: no motion, every object cue still there). (A model
    that cannot see the verbs scores ~1-2%, under the 10% of a random ranking: the positive sits in the middle of
    its 9 one-verb edits and has to beat every one of them.)
  * InstrAct-Logic ACC >= 60 (issue 8's bar) and 10 points above the static control, which gets ~40-55% from
    the text alone (an order swap moves pronoun phrases like "whisk it" ahead of their antecedent);
  * shuffling the frames costs Semantic R@1 (the temporal gap is positive).
Measured: with 8 shards (a quarter of the data) 600 steps gave Semantic 17.9 (static 2.0) but Logic only 54.7
(static 40.1): ~880 training clips are memorised. In-process on the default's 32 shards, 600 steps reached
Semantic ~38 and Logic ~87, hence all of the data here and thresholds well under that; this test in CI:
Semantic 33.3 (static 1.7, untrained 1.8), Logic 83.9 (static 43.9, untrained 38.2), temporal gap +27.3.
Issue 8's Semantic bar for the full default run (R@1 >= 50) is not asserted here: the four 1000-step default runs
measured reached 55.2, 62.3, 51.3 and 60.2 (README), a spread at which about one CI run in ten would fail.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

STEPS = 600
SEMANTIC_MIN = 15.0


def test_short_default_run_learns_motion_not_objects(tmp_path, ray_local):
    from instraction.config import load_config
    from instraction.workflow import pretrain

    data = tmp_path / "synthkitchen"
    cfg = load_config("configs/default.yaml", [
        f"run.dir={tmp_path / 'runs'}", "run.name=learning-proof",
        f"data.shards={data / 'shards'}", f"data.annotations={data / 'annotations'}",
        f"train.max_steps={STEPS}", "train.checkpoint_every=1000",
        # the session's Ray has 2 logical CPUs (tests/conftest.py): leave room for Ray Data's own actors
        "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5",
    ])
    summary = pretrain(cfg, echo=print)
    assert summary["steps"] == STEPS
    trained, base = summary["bench"], summary["baselines"]
    static, untrained = base["static_single_frame"], base["untrained"]
    sem, logic = trained["semantic"]["R@1"], trained["logic"]["ACC"]
    print(f"Semantic R@1 {sem:.1f} (static {static['semantic']['R@1']:.1f}, untrained "
          f"{untrained['semantic']['R@1']:.1f}); Logic {logic:.1f} (static {static['logic']['ACC']:.1f}, "
          f"untrained {untrained['logic']['ACC']:.1f}); temporal gap {summary['temporal_gap']}")
    assert sem >= SEMANTIC_MIN and sem >= 2 * static["semantic"]["R@1"]
    assert logic >= 60 and logic >= static["logic"]["ACC"] + 10
    assert summary["temporal_gap"]["semantic"] > 0
