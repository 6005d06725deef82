"""A random batch that follows the batch contract (docs/ARCHITECTURE.md), for tests and benchmarks of the model
and trainer.

    batch = make_dummy_batch(cfg, vocab_size=64, batch_size=4)
    out = model(batch)

Token ids follow the word tokenizer's layout (pad 0, bos 1, eos 2, mask 3, content ids >= 5). The batch covers the
cases the losses branch on: verb_count cycles through 0..M (no teacher, one verb, several), the number of real
hard negatives cycles through 0..Nn, and every caption with room has masked action tokens for MAM.
"""

from __future__ import annotations

import torch

__all__ = ["make_dummy_batch", "PAD_ID", "BOS_ID", "EOS_ID", "MASK_ID"]

PAD_ID, BOS_ID, EOS_ID, MASK_ID, FIRST_WORD_ID = 0, 1, 2, 3, 5


def _sentences(n: int, max_len: int, vocab_size: int, gen: torch.Generator, min_words: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """n token rows [n, max_len]: BOS, 1..max_len-2 random words, EOS, then padding; and their bool mask."""
    ids = torch.full((n, max_len), PAD_ID, dtype=torch.long)
    hi = max(max_len - 2, min_words)
    for row in range(n):
        words = int(torch.randint(min_words, hi + 1, (1,), generator=gen))
        body = torch.randint(FIRST_WORD_ID, vocab_size, (words,), generator=gen)
        ids[row, : words + 2] = torch.cat([torch.tensor([BOS_ID]), body, torch.tensor([EOS_ID])])
    return ids, ids != PAD_ID


def make_dummy_batch(cfg, vocab_size: int, batch_size: int, seed: int = 0, all_negatives: bool = False) -> dict:
    """A deterministic random batch shaped by ``cfg.data`` (a run :class:`instraction.config.Config`);
    ``all_negatives`` gives every clip ``data.max_negatives`` hard negatives (the paper-scale step benchmark).

    Returns video float [B,T,3,H,W]; text_ids/text_mask [B,L]; neg_ids [B,Nn,L], neg_mask bool [B,Nn];
    verb_ids/verb_mask [B,M,Lv], verb_count long [B]; mam_ids/mam_labels [B,L]; key list[str].
    """
    if vocab_size <= FIRST_WORD_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_WORD_ID}, got {vocab_size}")
    d = cfg.data
    b, length, nn_, m, lv = batch_size, d.max_text_len, d.max_negatives, d.max_verbs, d.max_verb_len
    gen = torch.Generator().manual_seed(seed)
    video = torch.randn(b, d.num_frames, 3, d.size, d.size, generator=gen)
    text_ids, text_mask = _sentences(b, length, vocab_size, gen, min_words=min(3, length - 2))

    neg_ids = torch.full((b, nn_, length), PAD_ID, dtype=torch.long)
    neg_mask = torch.zeros(b, nn_, dtype=torch.bool)
    for row in range(b):
        count = nn_ if all_negatives else row % (nn_ + 1)
        if count:
            neg_ids[row, :count], _ = _sentences(count, length, vocab_size, gen)
            neg_mask[row, :count] = True

    verb_count = torch.tensor([row % (m + 1) for row in range(b)], dtype=torch.long)
    verb_ids = torch.full((b, m, lv), PAD_ID, dtype=torch.long)
    for row in range(b):
        if verb_count[row]:
            verb_ids[row, : verb_count[row]], _ = _sentences(int(verb_count[row]), lv, vocab_size, gen)
    verb_mask = verb_ids != PAD_ID

    # MAM: mask up to two content tokens per caption (never BOS at 0); labels hold the original ids there.
    mam_ids, mam_labels = text_ids.clone(), torch.full_like(text_ids, -100)
    for row in range(b):
        words = int(text_mask[row].sum()) - 2
        if words < 1:
            continue
        picks = 1 + torch.randperm(words, generator=gen)[: min(2, words)]
        mam_labels[row, picks] = text_ids[row, picks]
        mam_ids[row, picks] = MASK_ID
    return {
        "video": video, "text_ids": text_ids, "text_mask": text_mask, "neg_ids": neg_ids, "neg_mask": neg_mask,
        "verb_ids": verb_ids, "verb_mask": verb_mask, "verb_count": verb_count, "mam_ids": mam_ids,
        "mam_labels": mam_labels, "key": [f"dummy{seed:04d}_{row:03d}" for row in range(b)],
    }
