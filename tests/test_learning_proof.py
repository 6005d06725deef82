"""Learning proof, short config: the main job end to end (SynthKitchen -> rules curation -> held-out InstrAct Bench
-> Ray Train + DeepSpeed on 2 CPU workers -> evaluation) must learn motion, not objects.

    python -m pytest tests/test_learning_proof.py -q          # ~5 minutes on 2 cores

The default config with fewer steps (STEPS instead of 800) and half the data. What it asserts, on the held-out
bench (source videos never seen in training):
  * InstrAct-Semantic R@1 of the trained model is at least twice that of the same model fed one random frame
    repeated (the static control: no motion, every object cue still there) and 3 points above the untrained
    model. (Not "above 10% chance": 10% is a random ranking's; a model that cannot see the verbs scores ~1-2%,
    because the positive sits in the middle of its 9 one-verb edits and has to beat every one of them.)
  * InstrAct-Logic ACC is 5 points above the untrained model's. Not above the static control's: that control
    gets ~45-60% from text alone (an order swap moves pronoun phrases like "whisk it" ahead of their
    antecedent), and in short runs the trained model does not beat it yet (400 steps: 51.8 vs 59.1); the full
    default run does (README);
  * shuffling the frames costs Semantic R@1 (the temporal gap is positive).
Measured here: 300 steps Semantic 6.5 (static 1.5, untrained 1.5), Logic 57.7 (static 43.8, untrained 33.6);
400 steps Semantic 6.5 (static 2.0), Logic 51.8 (static 59.1, untrained 33.6), temporal gap +2.5. STEPS = 600
for margin (~5 minutes).
Issue 8's bar for the full default run (Semantic R@1 >= 50, Logic >= 60) is checked by the README's measured run,
not here: a CI machine cannot afford that run (~9 minutes) on top of the rest.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

STEPS = 600


def test_short_default_run_learns_motion_not_objects(tmp_path, ray_local):
    from instraction.config import load_config
    from instraction.workflow import pretrain

    data = tmp_path / "synthkitchen"
    cfg = load_config("configs/default.yaml", [
        f"run.dir={tmp_path / 'runs'}", "run.name=learning-proof",
        f"data.shards={data / 'shards'}", f"data.annotations={data / 'annotations'}",
        "data.synthetic.num_shards=8", f"train.max_steps={STEPS}", "train.checkpoint_every=1000",
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
    assert sem >= 2 * static["semantic"]["R@1"] and sem >= untrained["semantic"]["R@1"] + 3
    assert logic >= untrained["logic"]["ACC"] + 5
    assert summary["temporal_gap"]["semantic"] > 0
