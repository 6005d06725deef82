"""Hard negatives (paper Sec. 3, stage 3): verb-altered and order-swapped captions and their validators.

    python -m pytest tests/test_negatives.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from instraction import lexicon
from instraction.curation import negatives, rules
from instraction.curation.negatives import NegativeSampler, validate_order_swapped, validate_verb_altered
from instraction.data import captions
from instraction.lexicon import SYNTH_OBJECTS, SYNTH_VERBS

PAPER = "Crack the egg using the side of this ceramic mug and separate the white into the small container."


def analysed(text):
    analysis = rules.analyze(text)
    assert rules.classify(analysis)[0]
    return analysis, negatives.slots_of(analysis)


def changed_token(positive, negative):
    pos, neg = rules.tokenize_lower(positive), rules.tokenize_lower(negative)
    assert len(pos) == len(neg)
    diff = [i for i, (a, b) in enumerate(zip(pos, neg)) if a != b]
    assert len(diff) == 1, (positive, negative)
    return pos[diff[0]], neg[diff[0]]


def test_verb_altered_changes_one_action_verb_to_another_motion_class():
    analysis, slots = analysed(PAPER)
    out = NegativeSampler(max_verb_altered=9, preferred_verbs=SYNTH_VERBS).verb_altered(analysis, slots, "k")
    assert len(out) == 9 and len(set(out)) == 9 and PAPER not in out
    replaced = {changed_token(PAPER, neg)[0] for neg in out}
    assert replaced == {"crack", "separate"}  # round-robin over both actions
    for neg in out:
        old, new = changed_token(PAPER, neg)
        assert lexicon.VERBS[rules.lemma_of(old)] != lexicon.VERBS[rules.lemma_of(new)]
        assert new in SYNTH_VERBS  # the dataset's verbs come first
        assert neg[0].isupper() and neg.endswith("container.")  # capitalisation and punctuation kept
        assert validate_verb_altered(PAPER, neg, [s.index for s in slots])


def test_verb_altered_keeps_the_inflection():
    text = "now we are whisking the eggs and then I sliced the bread"
    analysis, slots = analysed(text)
    out = NegativeSampler(max_verb_altered=12).verb_altered(analysis, slots, "k")
    for neg in out:
        old, new = changed_token(text, neg)
        assert rules.inflect(rules.lemma_of(new), rules.VERB_FORMS[old][1]) == new  # -ing stays -ing, past past
    assert any(changed_token(text, n)[1].endswith("ing") for n in out)
    assert any(changed_token(text, n)[0] == "sliced" for n in out)


def test_verb_altered_is_deterministic_per_key_and_varies_across_keys():
    analysis, slots = analysed("crack the egg and then whisk it")
    sampler = NegativeSampler(max_verb_altered=3, preferred_verbs=SYNTH_VERBS)
    first = sampler.verb_altered(analysis, slots, "clip-1")
    assert sampler.verb_altered(analysis, slots, "clip-1") == first
    others = {tuple(sampler.verb_altered(analysis, slots, f"clip-{i}")) for i in range(2, 12)}
    assert len(others) > 1
    assert NegativeSampler(max_verb_altered=0).verb_altered(analysis, slots, "k") == []


def test_order_swapped_paper_example_and_connectives_in_place():
    text = "crack the egg and then whisk it"
    analysis, slots = analysed(text)
    assert NegativeSampler().order_swapped(analysis, slots, "k") == ["whisk it and then crack the egg"]

    text = "First chop the onions, then add them to the pan and finally stir the sauce."
    analysis, slots = analysed(text)
    out = NegativeSampler(max_order_swapped=5).order_swapped(analysis, slots, "k")
    assert len(out) == 5 and len(set(out)) == 5 and text not in out
    assert out[0] == "First stir the sauce, then add them to the pan and finally chop the onions."  # reversal
    for neg in out:
        assert neg.startswith("First ") and ", then " in neg and " and finally " in neg and neg.endswith(".")
        assert sorted(rules.tokenize_lower(neg)) == sorted(rules.tokenize_lower(text))
        assert validate_order_swapped(text, neg)


def test_order_swapped_capitalises_the_new_first_action_and_moves_let_it():
    text = "Whisk the eggs. Then let it rest and slice the bread"
    analysis, slots = analysed(text)
    out = NegativeSampler(max_order_swapped=6).order_swapped(analysis, slots, "k")
    assert out[0] == "Slice the bread. Then let it rest and whisk the eggs"
    assert all(neg[0].isupper() and "let it rest" in neg.lower() for neg in out)
    assert "Let it rest. Then whisk the eggs and slice the bread" in out


def test_order_swapped_needs_two_different_actions():
    sampler = NegativeSampler()
    for text in ("crack the egg", "stir the sauce then stir the sauce"):
        analysis = rules.analyze(text)
        assert sampler.order_swapped(analysis, negatives.slots_of(analysis), "k") == []


@pytest.mark.parametrize("text,actions", [("grate it grate", ["grate it", "grate"]),
                                          ("stir it then stir the sauce", ["stir it", "stir sauce"]),
                                          ("add salt, then add pepper", ["add salt", "add pepper"])])
def test_order_swapped_with_repeated_verbs_are_only_what_the_validator_accepts(text, actions):
    """Bodies with the same verb that differ only in function words swap into the same verbs and content words in
    the same order ("grate it grate" -> "grate grate it"): not an order-swapped negative, so not generated."""
    _, swapped = negatives.negatives_for(text, actions)
    assert all(negatives.validate_order_swapped(text, n) for n in swapped)
    assert bool(swapped) == (text != "grate it grate")  # the other two really change the order of content


def test_validators_reject_what_is_not_a_hard_negative():
    pos = "crack the egg and then whisk it"
    assert validate_verb_altered(pos, "crack the egg and then stir it")
    assert not validate_verb_altered(pos, "crack the egg and then beat it")  # same motion class: a synonym
    assert not validate_verb_altered(pos, "crack the egg and then whisk them")  # not a verb
    assert not validate_verb_altered(pos, "stir the egg and then stir it")  # two tokens changed
    assert not validate_verb_altered(pos, pos)
    assert not validate_verb_altered(pos, "crack the egg and whisk it")  # a word dropped
    assert not validate_verb_altered(pos, "crack the egg and then stir it", verb_indices=[0])  # not that slot
    assert validate_order_swapped(pos, "whisk it and then crack the egg")
    assert not validate_order_swapped(pos, "Crack the  egg and then whisk it")  # case and spacing only
    assert not validate_order_swapped(pos, "whisk it and then crack the eggs")  # vocabulary changed
    assert validate_order_swapped("add the salt then add the pepper", "add the pepper then add the salt")


def test_align_finds_llm_actions_in_the_caption_in_order():
    analysis = rules.analyze("okay so we are whisking the eggs then I poured it and whisked again")
    slots = negatives.align(analysis, ["whisk egg", "pour egg", "whisk egg", "flip egg"])
    assert [(analysis.words[s.index], s.lemma, s.form) for s in slots] == [
        ("whisking", "whisk", "ing"), ("poured", "pour", "ed"), ("whisked", "whisk", "ed")]


def test_negatives_for_ground_truth_actions():
    va, os_ = negatives.negatives_for("crack the egg into the bowl then whisk the egg", ["crack egg", "whisk egg"])
    assert len(va) == 9 and os_ == ["whisk the egg then crack the egg into the bowl"]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_negative_of_synthkitchen_captions_validates(seed):
    rng = np.random.default_rng(seed)
    sampler = NegativeSampler(9, 3, SYNTH_VERBS, seed)
    for i in range(300):
        verbs = [SYNTH_VERBS[j] for j in rng.choice(len(SYNTH_VERBS), size=int(rng.integers(2, 5)), replace=False)]
        text = captions.instructional_caption(verbs, SYNTH_OBJECTS[i % len(SYNTH_OBJECTS)], rng, 28)
        analysis, slots = analysed(text)
        va, os_ = sampler.verb_altered(analysis, slots, str(i)), sampler.order_swapped(analysis, slots, str(i))
        assert len(va) == 9 and len(set(va)) == 9 and text not in va
        assert len(os_) == (1 if len(verbs) == 2 else 3) and len(set(os_)) == len(os_)
        assert all(validate_verb_altered(text, n, [s.index for s in slots]) for n in va)
        assert all(validate_order_swapped(text, n) for n in os_)
