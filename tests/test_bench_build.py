"""InstrAct Bench builder invariants on a hand-made annotation table."""

import random

import pandas as pd
import pytest

from instraction.bench.build import build, load, split_annotations, write
from instraction.bench.config import BenchConfig

VERBS = ["crack", "whisk", "stir", "pour", "flip", "slide", "chop", "roll", "press", "shake", "lift", "drop"]


def _table(n_videos=60, clips_per_video=4, seed=0):
    rng = random.Random(seed)
    rows = []
    for v in range(n_videos):
        for c in range(clips_per_video):
            n_act = rng.choice([1, 2, 3, 4])
            verbs = rng.sample(VERBS, n_act)
            obj = rng.choice(["egg", "dough", "pan", "knife"])
            caption = " then ".join(f"{vb} the {obj}" for vb in verbs)
            n_alt = rng.choice([3, 9, 10, 12])
            alts = [f"{w} the {obj} " + caption.split(" ", 3)[-1] for w in rng.sample(VERBS, min(n_alt, 12))]
            alts = [a for a in alts if a != caption]
            swaps = [" then ".join(f"{vb} the {obj}" for vb in rng.sample(verbs, n_act)) for _ in range(4)] if n_act > 1 else []
            decision = rng.choice(["kept"] * 8 + ["dropped", "quarantined"])
            rows.append(dict(key=f"v{v:03d}_{c}", shard="00000", video_key=f"v{v:03d}_{c}", video_id=f"vid{v:03d}",
                             start=0.0, end=2.0, caption=caption, decision=decision, reason="",
                             actions=[f"{vb} {obj}" for vb in verbs], verb_altered=alts + [caption, alts[0]],
                             order_swapped=swaps + [caption], primary_object=obj))
    return pd.DataFrame(rows)


def test_split_is_by_video_and_disjoint():
    table = _table()
    train, held = split_annotations(table, BenchConfig(holdout_fraction=0.3))
    assert set(train["video_id"]).isdisjoint(held["video_id"])
    assert len(train) + len(held) == (table["decision"] == "kept").sum()
    assert 0.1 < len(held) / (len(train) + len(held)) < 0.5


def test_semantic_has_exactly_ten_distinct_candidates_with_answer():
    table = _table()
    tables = build(table, BenchConfig(holdout_fraction=0.5))
    sem = tables.semantic
    assert len(sem) > 0
    for row in sem.itertuples():
        cands = list(row.candidates)
        assert len(cands) == 10 and len(set(cands)) == 10
        truth = table.set_index("key").loc[row.key, "caption"]
        assert cands[row.answer] == truth
        assert sum(c == truth for c in cands) == 1  # every negative differs from the answer
    # clips with fewer than 9 distinct negatives were skipped and counted
    assert tables.manifest["skipped"]["semantic_too_few_verb_altered"] > 0
    assert len(set(sem["answer"])) > 3  # the answer position is shuffled


def test_logic_uses_multi_action_clips_and_two_to_three_negatives():
    tables = build(_table(), BenchConfig(holdout_fraction=0.5))
    logic = tables.logic
    assert len(logic) > 0
    for row in logic.itertuples():
        assert len(row.actions) >= 3
        assert 3 <= len(row.candidates) <= 4 and len(set(row.candidates)) == len(row.candidates)
        assert 0 <= row.answer < len(row.candidates)


def test_dynamics_pools_meet_minimum_and_have_categories():
    bench = BenchConfig(holdout_fraction=0.5, dynamics_min_pool=5)
    tables = build(_table(), bench)
    counts = tables.dynamics["object"].value_counts()
    assert (counts >= 5).all()
    assert set(tables.dynamics["category"]) <= {"Ingredients", "Processed food", "Tools & appliances", "Other"}
    assert tables.manifest["counts"]["dynamics"] == len(tables.dynamics)
    assert tables.manifest["train_overlap"] == {"keys": 0, "videos": 0}


def test_no_training_key_or_video_in_bench_and_roundtrip(tmp_path):
    table = _table()
    bench = BenchConfig(holdout_fraction=0.4)
    tables = build(table, bench)
    train, _ = split_annotations(table, bench)
    for frame in (tables.semantic, tables.logic, tables.dynamics):
        assert set(frame["key"]).isdisjoint(train["key"])
        assert set(frame["video_id"]).isdisjoint(train["video_id"])
    write(tables, str(tmp_path / "bench"))
    again = load(str(tmp_path / "bench"))
    assert again.manifest["counts"] == tables.manifest["counts"]
    assert len(again.semantic) == len(tables.semantic)
    assert list(again.semantic.iloc[0]["candidates"]) == list(tables.semantic.iloc[0]["candidates"])


def test_build_is_deterministic():
    a = build(_table(), BenchConfig(holdout_fraction=0.5))
    b = build(_table(), BenchConfig(holdout_fraction=0.5))
    pd.testing.assert_frame_equal(a.semantic, b.semantic)


def test_questions_list_the_verb_object_pairs_training_never_shows():
    """A pair that occurs only in held-out videos is unseen; one that some training clip has is seen, whatever its
    inflection ("whisking") or object pronoun ("whisk it") in the held-out clip."""
    from instraction.bench.build import action_pairs, split_annotations, training_pairs

    table = _table(n_videos=80)
    bench = BenchConfig(holdout_fraction=0.5)
    train, held = split_annotations(table, bench)
    seen = training_pairs(train)
    assert action_pairs(["whisking it gently", "pour the milk"], "Egg") == {("whisk", "egg"), ("pour", "egg")}
    # drop every training clip that shows "crack" with "egg": the pair becomes unseen
    crack_egg = table["actions"].map(lambda a: any(x.startswith("crack") for x in a)) & (table["primary_object"] == "egg")
    is_train = table["key"].isin(train["key"])
    tables = build(table[~(crack_egg & is_train)], bench)
    comp = tables.manifest["compositional"]
    assert "crack egg" in comp["unseen_pairs"] and comp["train_pairs"] == len(seen) - 1
    for task in ("semantic", "logic"):
        frame = getattr(tables, task)
        for row in frame.itertuples():
            expected = sorted(f"{v} {o}" for v, o in action_pairs(row.actions, table.set_index("key").loc[row.key,
                              "primary_object"]) - (seen - {("crack", "egg")}))
            assert list(row.unseen_pairs) == expected
        assert comp[task]["seen"] + comp[task]["unseen"] == len(frame)
    assert comp["semantic"]["unseen"] > 0 and comp["semantic"]["seen"] > 0
