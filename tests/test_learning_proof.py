"""Learning proof: the main job end to end on its default config (SynthKitchen -> rules curation -> held-out InstrAct
Bench -> Ray Train + DeepSpeed on 2 CPU workers, 1200 steps -> evaluation) must learn motion, not objects.

    python -m pytest tests/test_learning_proof.py -q          # ~5-7 minutes on 2 cores

configs/default.yaml as `python jobs/pretrain.py` runs it (only the directories, and the CPU reservations that
let it share the test session's 2-CPU Ray, differ). Issue 8's bars, on the held-out bench (source videos never
seen in training):
  * InstrAct-Semantic R@1 >= 72 (chance 10; issue 8 asked 50), and the same model fed one random frame repeated
    (the static control: no motion, every object cue still there) scores at most half of it. (A model that cannot
    see the verbs scores ~1-2%, under chance: the positive sits in the middle of its 9 one-verb edits and has to
    beat every one.)
  * InstrAct-Logic ACC >= 60 (chance ~29) and 10 points above the static control, which gets ~40-55% from the
    text alone (an order swap moves pronoun phrases like "whisk it" ahead of their antecedent);
  * shuffling the frames costs Semantic R@1 (the temporal gap is positive);
  * on clips with a verb-object pair that no training clip shows (SynthKitchen keeps ~20% of the pairs to the bench
    split), Semantic R@1 is at least twice the static control's and at most 15 points under the seen pairs'.
Measured on this config (README, session 13): Semantic R@1 81.2 / 80.4 / 80.0 end to end for seeds 0 / 1 / 2 (seen /
unseen pairs 82.3 / 80.2, 85.0 / 76.1, 83.1 / 77.1); 79.1-83.0 over seeds 0-2 in one process (session 12: the bar of
72 is ~5 standard deviations below); static 0.5-0.8; Logic 98.0-98.6. Without object-word dropout
(data.augment.object_dropout, the previous default) the model scored 63-66 with unseen pairs 19-22 points under seen
ones: both bars guard it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SEMANTIC_MIN = 72.0
MAX_UNSEEN_GAP = 15.0


def test_default_run_learns_motion_not_objects(tmp_path, ray_local):
    from instraction.config import load_config
    from instraction.train.engine import native_bf16
    from instraction.workflow import pretrain

    data = tmp_path / "synthkitchen"
    cfg = load_config("configs/default.yaml", [
        f"run.dir={tmp_path / 'runs'}", "run.name=learning-proof",
        f"data.shards={data / 'shards'}", f"data.annotations={data / 'annotations'}", "data.make_synthetic=true",
        # the session's Ray has 2 logical CPUs (tests/conftest.py): leave room for Ray Data's own actors
        "train.cpus_per_worker=0.5", "data.decode_num_cpus=0.5",
    ])
    summary = pretrain(cfg, echo=print)
    assert summary["steps"] == cfg.train.max_steps == 1200
    # precision "auto": bf16 autocast in the workers exactly where this CPU has bf16 units (AMX / AVX512-BF16)
    assert cfg.train.precision == "auto"
    assert summary["final_metrics"]["bf16_autocast"] == float(native_bf16(use_gpu=False))
    trained, base = summary["bench"], summary["baselines"]
    static, untrained = base["static_single_frame"], base["untrained"]
    sem, logic = trained["semantic"]["R@1"], trained["logic"]["ACC"]
    print(f"Semantic R@1 {sem:.1f} (static {static['semantic']['R@1']:.1f}, untrained "
          f"{untrained['semantic']['R@1']:.1f}); Logic {logic:.1f} (static {static['logic']['ACC']:.1f}, "
          f"untrained {untrained['logic']['ACC']:.1f}); temporal gap {summary['temporal_gap']}")
    assert sem >= SEMANTIC_MIN and static["semantic"]["R@1"] <= sem / 2
    assert logic >= 60 and logic >= static["logic"]["ACC"] + 10
    assert summary["temporal_gap"]["semantic"] > 0
    # compositional generalisation: clips with a verb-object pair no training clip shows
    comp, static_comp = summary["compositional"]["semantic"], static["compositional"]["semantic"]
    print(f"Semantic R@1 seen {comp['seen']['R@1']:.1f} / unseen {comp['unseen']['R@1']:.1f} pairs "
          f"({comp['questions']}); static unseen {static_comp['unseen']['R@1']:.1f}")
    assert comp["questions"]["unseen"] >= 50 and comp["questions"]["seen"] >= 50
    assert comp["unseen"]["R@1"] >= 2 * max(static["semantic"]["R@1"], static_comp["unseen"]["R@1"])
    assert comp["seen"]["R@1"] - comp["unseen"]["R@1"] <= MAX_UNSEEN_GAP
    # the trained model is scored under every temporal control, the untrained baseline on normal clips only
    results = json.loads((Path(summary["run_dir"]) / "bench" / "results.json").read_text())
    assert set(results["InstrAction (trained)"]["controls"]) == {"reversed", "shuffled", "static"}
    assert results["untrained"]["controls"] == {} and results["untrained"]["semantic"]["R@1"] >= 0
