"""Tokenizers: one small interface over the built-in word tokenizer and any HF tokenizer.

``words`` needs no files: the lexicon's words get fixed ids and any other word falls into one of
``oov_buckets`` hashed ids (crc32, stable across processes), so captions outside the lexicon still tokenise.
A path loads a HF tokenizer (a CLIP checkpoint directory carries one).

Both return ``(ids, mask)`` as LongTensor/BoolTensor [N, L] with BOS ... EOS then padding, and both can mask
chosen words for Masked Action Modeling (``mask_words``), returning labels that are -100 except at masked
positions.
"""

from __future__ import annotations

import functools
import re
import zlib
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import torch

from instraction import lexicon

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    mask_id: int
    unk_id: int | None

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def mask_words(
        self, texts: Sequence[str], words: Sequence[Iterable[str]], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class WordTokenizer:
    """Lower-cased word/punctuation tokenizer over the lexicon vocabulary plus hashed OOV buckets."""

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>", "<unk>")

    def __init__(self, vocabulary: Sequence[str] | None = None, oov_buckets: int = 512):
        words = list(vocabulary if vocabulary is not None else lexicon.vocabulary())
        self.itos = list(self.SPECIALS) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.oov_offset = len(self.itos)
        self.oov_buckets = oov_buckets
        self.vocab_size = self.oov_offset + oov_buckets
        self.pad_id, self.bos_id, self.eos_id, self.mask_id, self.unk_id = range(5)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def token_id(self, word: str) -> int:
        idx = self.stoi.get(word)
        if idx is not None:
            return idx
        return self.oov_offset + zlib.crc32(word.encode("utf-8")) % self.oov_buckets

    def encode(self, text: str, max_len: int) -> list[int]:
        body = [self.token_id(w) for w in self.split(text)][: max_len - 2]
        return [self.bos_id, *body, self.eos_id]

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            toks = self.encode(text, max_len)
            ids[row, : len(toks)] = torch.tensor(toks)
        return ids, ids != self.pad_id

    def mask_words(
        self, texts: Sequence[str], words: Sequence[Iterable[str]], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace every occurrence of ``words[i]`` in ``texts[i]`` by <mask>; labels hold the original ids there."""
        ids, _ = self(texts, max_len)
        labels = torch.full_like(ids, -100)
        for row, targets in enumerate(words):
            target_ids = {self.token_id(w.lower()) for w in targets}
            hit = torch.isin(ids[row], torch.tensor(sorted(target_ids), dtype=torch.long)) if target_ids else None
            if hit is not None:
                hit[0] = False
                labels[row][hit] = ids[row][hit]
                ids[row][hit] = self.mask_id
        return ids, labels

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.bos_id, self.eos_id):
                continue
            out.append(self.itos[i] if i < self.oov_offset else "<oov>")
        return " ".join(out)


class HFTokenizer:
    """Wraps a transformers tokenizer loaded from a local directory (no downloads)."""

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if self.tok.mask_token is None:
            self.tok.add_special_tokens({"mask_token": "<mask>"})
        self.vocab_size = len(self.tok)
        self.pad_id = self.tok.pad_token_id
        self.mask_id = self.tok.mask_token_id
        self.unk_id = self.tok.unk_token_id  # None where the tokenizer has none; CLIP's is its end token

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok(list(texts), max_length=max_len, truncation=True, padding="max_length", return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def mask_words(
        self, texts: Sequence[str], words: Sequence[Iterable[str]], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok(
            list(texts), max_length=max_len, truncation=True, padding="max_length",
            return_offsets_mapping=True, return_tensors="pt",
        )
        ids = enc["input_ids"].clone()
        labels = torch.full_like(ids, -100)
        for row, (text, targets) in enumerate(zip(texts, words)):
            spans = [
                m.span() for w in targets for m in re.finditer(rf"\b{re.escape(w)}\b", text, flags=re.IGNORECASE)
            ]
            for col, (start, end) in enumerate(enc["offset_mapping"][row].tolist()):
                if end > start and any(start < e and end > s for s, e in spans):
                    labels[row, col] = ids[row, col]
                    ids[row, col] = self.mask_id
        return ids, labels


def build_tokenizer(spec: str) -> Tokenizer:
    """``"words"`` -> :class:`WordTokenizer`; anything else is a local HF tokenizer / checkpoint directory."""
    if spec == "words":
        return WordTokenizer()
    if not Path(spec).exists():
        raise ValueError(f"data.tokenizer={spec!r}: neither 'words' nor an existing tokenizer directory")
    return HFTokenizer(spec)


@functools.lru_cache(maxsize=4)
def shared_tokenizer(spec: str) -> Tokenizer:
    """:func:`build_tokenizer`, once per process: for data code that runs in many tasks of one worker process
    (decode tasks, collates); read-only use only."""
    return build_tokenizer(spec)
