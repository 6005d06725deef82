"""data.augment.object_dropout: a clip's object words become the unknown token in all of its texts, or none do.

    python -m pytest tests/test_object_dropout.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instraction.config import ConfigError, load_config
from instraction.data.examples import Collate, drop_object_words, object_dropout_tokens
from instraction.data.tokenizer import build_tokenizer

L, LV = 24, 6
CLIPS = [  # caption, hard negatives, verb phrases
    ("okay now first drop the bowl onto the tray next lift it up",
     ["okay now first shake the bowl onto the tray next lift it up", "okay now first lift it up next drop the bowl"],
     ["drop bowl", "lift bowl"]),
    ("so you can pour the egg once done roll it across the board",
     ["so you can stir the egg once done roll it across the board"],
     ["pour egg", "roll egg"]),
]


def _rows(clips=CLIPS, b=None):
    """The decode stage's columns for ``clips`` (repeated to ``b`` rows), tokenised as the pipeline does."""
    tok = build_tokenizer("words")
    clips = [clips[i % len(clips)] for i in range(b or len(clips))]
    ids, mask = tok([c[0] for c in clips], L)
    mam_ids, mam_labels = tok.mask_words([c[0] for c in clips], [[p.split()[0] for p in c[2]] for c in clips], L)
    n_neg, n_verb = max(len(c[1]) for c in clips), 4
    neg_ids = torch.zeros(len(clips), n_neg, L, dtype=torch.long)
    verb_ids = torch.zeros(len(clips), n_verb, LV, dtype=torch.long)
    for i, (_, negs, verbs) in enumerate(clips):
        neg_ids[i, : len(negs)] = tok(negs, L)[0]
        verb_ids[i, : len(verbs)] = tok(verbs, LV)[0]
    return {"video": np.zeros((len(clips), 8, 16, 16, 3), np.uint8), "text_ids": ids.numpy(),
            "text_mask": mask.numpy(), "neg_ids": neg_ids.numpy(), "neg_mask": (neg_ids != 0).any(-1).numpy(),
            "verb_ids": verb_ids.numpy(), "verb_mask": (verb_ids != 0).numpy(),
            "verb_count": np.array([len(c[2]) for c in clips]), "mam_ids": mam_ids.numpy(),
            "mam_labels": mam_labels.numpy()}


def _words(ids) -> list[str]:
    tok = build_tokenizer("words")
    return [tok.itos[int(i)] for i in ids if int(i) != tok.pad_id]


def test_every_text_of_a_dropped_clip_loses_its_object_words_and_nothing_else():
    rows = _rows()
    unk, specials = object_dropout_tokens("words")
    out = drop_object_words(rows, 1.0, np.random.default_rng(0), unk, specials)
    caption = "okay now first drop the <unk> onto the tray next lift it up"
    assert _words(out["text_ids"][0]) == ["<bos>", *caption.split(), "<eos>"]
    assert _words(out["neg_ids"][0][1])[-3:] == ["the", "<unk>", "<eos>"]
    assert [_words(v) for v in out["verb_ids"][1][:2]] == [["<bos>", "pour", "<unk>", "<eos>"],
                                                           ["<bos>", "roll", "<unk>", "<eos>"]]
    assert "<mask>" in _words(out["mam_ids"][1]) and "egg" not in _words(out["mam_ids"][1])
    for name in ("text_ids", "neg_ids", "verb_ids", "mam_ids"):  # only object tokens changed, into unk
        changed = out[name] != rows[name]
        assert changed.any() and (out[name][changed] == unk).all()
        assert set(np.unique(rows[name][changed])) == {build_tokenizer("words").token_id(w) for w in ("bowl", "egg")}
    for name in ("text_mask", "neg_mask", "verb_mask", "verb_count", "mam_labels", "video"):
        assert np.array_equal(out[name], rows[name])
    assert not np.shares_memory(out["text_ids"], rows["text_ids"])  # the input batch is left as it was


def test_dropout_is_per_clip_with_the_given_probability():
    rows = _rows(b=400)
    unk, specials = object_dropout_tokens("words")
    out = drop_object_words(rows, 0.3, np.random.default_rng(1), unk, specials)
    caption = (out["text_ids"] == unk).any(-1)
    assert np.array_equal(caption, (out["verb_ids"] == unk).any((-1, -2)))  # all of a clip's texts, or none
    assert np.array_equal(caption, (out["mam_ids"] == unk).any(-1))
    assert abs(caption.mean() - 0.3) < 0.08  # 400 draws: ~3.5 standard deviations
    assert np.array_equal(out["text_ids"][~caption], rows["text_ids"][~caption])
    same = drop_object_words(rows, 0.0, np.random.default_rng(1), unk, specials)
    assert all(np.array_equal(same[k], rows[k]) for k in rows)


def test_a_clip_without_two_word_verb_phrases_keeps_its_words():
    rows = _rows([("just chatting about the kitchen today", [], [])])
    unk, specials = object_dropout_tokens("words")
    out = drop_object_words(rows, 1.0, np.random.default_rng(0), unk, specials)
    assert all(np.array_equal(out[k], rows[k]) for k in rows)


def test_training_collate_drops_objects_and_evaluation_collate_does_not():
    cfg = load_config(None, ["data.augment.object_dropout=1.0", "data.size=16"])
    rows = _rows()
    unk = build_tokenizer("words").unk_id
    assert (Collate(cfg.data, augment_seed=(0, 0, 0))(rows)["text_ids"] == unk).any(-1).all()
    assert not (Collate(cfg.data)(rows)["text_ids"] == unk).any()
    with pytest.raises(ConfigError, match="data.augment.object_dropout"):
        load_config(None, ["data.augment.object_dropout=1.5"])


def test_a_tokenizer_whose_unknown_token_is_its_end_token_is_refused_at_start(tmp_path):
    import json

    from transformers import CLIPTokenizer

    words = ["<|startoftext|>", "<|endoftext|>", "a</w>", "b</w>", "a", "b"]  # CLIP's unk is <|endoftext|>
    (tmp_path / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(tmp_path / "tok")
    cfg = load_config(None, ["data.augment.object_dropout=0.5", f"data.tokenizer={tmp_path / 'tok'}"])
    with pytest.raises(ValueError, match="unknown token apart from the begin, end and pad"):
        Collate(cfg.data, augment_seed=(0, 0, 0))
    Collate(cfg.data)  # evaluation collates never drop words
