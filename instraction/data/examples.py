"""Rows of the decode stage -> the batch contract (docs/ARCHITECTURE.md).

    batch = collate(rows, cfg.data)                          # numpy rows of the decode stage -> dict of tensors
    shard.iter_torch_batches(batch_size=32, collate_fn=Collate(cfg.data))   # what train/batches.py does per epoch

Batch contract (B rows): ``video`` float32 [B,T,3,H,W] normalised with data.mean/std; ``text_ids`` long [B,L],
``text_mask`` bool [B,L]; ``neg_ids`` long [B,Nn,L], ``neg_mask`` bool [B,Nn] (real negatives; padding rows are
all pad), ``neg_token_mask`` bool [B,Nn,L] (extra, when the rows carry it: the tokenizer's token mask of the
negatives, which keeps CLIP's end token although it is also the pad id); ``verb_ids`` long [B,M,Lv], ``verb_mask``
bool [B,M,Lv], ``verb_count`` long [B]; ``mam_ids`` long [B,L], ``mam_labels`` long [B,L] (-100 except masked
action tokens); optional ``key`` list[str].
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from instraction.data.config import DataConfig
from instraction.data.video import augment_clips

_LONG = ("text_ids", "neg_ids", "verb_ids", "verb_count", "mam_ids", "mam_labels")
_BOOL = ("text_mask", "neg_mask", "verb_mask")


def _stack(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(batch, Mapping):
        return batch
    rows = list(batch)
    return {k: (np.stack([np.asarray(r[k]) for r in rows]) if k != "key" else [r[k] for r in rows]) for k in rows[0]}


def normalise_video(video: np.ndarray | torch.Tensor, data: DataConfig) -> torch.Tensor:
    """uint8 [B,T,H,W,3] -> float32 [B,T,3,H,W], ``(x / 255 - mean) / std`` per channel (a tensor stays on its
    device: uint8 batches can be moved first and normalised on the GPU).

    Arrays are done in numpy on purpose: collation runs in Ray's prefetch threads beside the training step, and
    numpy's single-threaded kernels do not wake torch's intra-op thread pool (whose spinning threads would take
    cores from the step and the decoders). One pass transposes and converts, two in-place passes normalise.
    """
    if isinstance(video, torch.Tensor):  # e.g. uint8 frames already on the GPU: normalise there
        mean = torch.tensor(data.mean, device=video.device).view(1, 1, 3, 1, 1) * 255.0
        std = torch.tensor(data.std, device=video.device).view(1, 1, 3, 1, 1) * 255.0
        v = video.permute(0, 1, 4, 2, 3).to(torch.float32, memory_format=torch.contiguous_format)
        return v.sub_(mean).div_(std)
    out = np.ascontiguousarray(np.asarray(video).transpose(0, 1, 4, 2, 3), dtype=np.float32)
    mean = np.asarray(data.mean, np.float32).reshape(1, 1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (np.asarray(data.std, np.float32).reshape(1, 1, 3, 1, 1) * 255.0)
    np.subtract(out, mean, out=out)
    np.multiply(out, inv_std, out=out)
    return torch.from_numpy(out)


def collate(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]], data: DataConfig,
            include_keys: bool = True, rng: Optional[np.random.Generator] = None) -> dict[str, Any]:
    """A numpy batch (dict of stacked columns, as Ray's ``iter_batches`` gives) or a list of decode-stage rows
    -> the batch contract (module docstring) as CPU tensors. With ``rng`` (training), ``data.augment`` is applied
    to the clips first."""
    cols = _stack(batch)
    video = cols["video"]
    if rng is not None and data.augment.enabled:
        video = augment_clips(video, rng, data.augment.hflip, data.augment.max_shift)
    if rng is not None and data.augment.object_dropout > 0:
        cols = drop_object_words(cols, data.augment.object_dropout, rng, *object_dropout_tokens(data.tokenizer))
    out: dict[str, Any] = {"video": normalise_video(video, data)}
    for name in _LONG:
        out[name] = torch.from_numpy(np.array(cols[name], dtype=np.int64))
    for name in _BOOL:
        out[name] = torch.from_numpy(np.array(cols[name], dtype=bool))
    if "neg_token_mask" in cols:  # the tokenizer's mask (decode stage): keeps CLIP's end token, which is also pad
        token = torch.from_numpy(np.array(cols["neg_token_mask"], dtype=bool))
        out["neg_token_mask"] = token & out["neg_mask"].unsqueeze(-1)
    # without it the model derives the mask from the padding (model.instraction.negative_masks)
    if include_keys and "key" in cols:
        out["key"] = [str(k) for k in cols["key"]]
    return out


_TEXT_COLUMNS = ("text_ids", "neg_ids", "verb_ids", "mam_ids")


def drop_object_words(cols: Mapping[str, Any], p: float, rng: np.random.Generator, replacement: int,
                      specials: Sequence[int] = ()) -> dict:
    """``data.augment.object_dropout``: with probability ``p`` per clip, every occurrence of the clip's object
    tokens (the last word of each of its verb phrases of two or more words; ``specials``, the tokenizer's begin /
    end tokens, are not words) in its caption, hard negatives, verb phrases and MAM input becomes ``replacement``.
    Lengths, masks and MAM labels are unchanged."""
    count = np.asarray(cols["verb_count"]).reshape(-1)
    picked = np.flatnonzero(rng.random(len(count)) < p)
    if picked.size == 0:
        return dict(cols)
    verb_ids = np.asarray(cols["verb_ids"])
    words = np.asarray(cols["verb_mask"], dtype=bool) & ~np.isin(verb_ids, np.asarray(specials, dtype=verb_ids.dtype))
    lengths = words.sum(-1)  # [B,M] words per phrase
    last_word = words.shape[-1] - 1 - np.argmax(words[..., ::-1], axis=-1)  # [B,M] position of the last word
    last = np.take_along_axis(verb_ids, last_word[..., None], -1)[..., 0]
    phrase = (np.arange(verb_ids.shape[1])[None] < count[:, None]) & (lengths >= 2)
    objects = np.where(phrase, last, -1)[picked]  # [P,M] the picked clips' object tokens, -1 where none (no token id)
    out = dict(cols)
    for name in _TEXT_COLUMNS:
        values = np.array(cols[name], copy=True)
        flat = values[picked].reshape(picked.size, -1)  # [P,K] every token of the clip's texts of this column
        hit = (flat[:, :, None] == objects[:, None, :]).any(-1)
        values[picked] = np.where(hit, replacement, flat).reshape(values[picked].shape)
        out[name] = values
    return out


@lru_cache(maxsize=4)
def object_dropout_tokens(tokenizer: str) -> tuple[int, tuple[int, ...]]:
    """(the unknown token that ``drop_object_words`` writes, the begin / end tokens it skips) of ``data.tokenizer``."""
    from instraction.data.tokenizer import shared_tokenizer

    tok = shared_tokenizer(tokenizer)
    unk = tok.unk_id
    ids, mask = tok([""], 8)  # an empty text is just the tokenizer's begin / end tokens
    specials = tuple(int(i) for i in ids[0][mask[0].bool()])
    if unk is None or int(unk) in (*specials, int(tok.pad_id)):  # CLIP's unknown token is its end token
        raise ValueError(f"data.augment.object_dropout needs an unknown token apart from the begin, end and pad "
                         f"tokens; the tokenizer {tokenizer!r} has none")
    return int(unk), specials


try:  # Ray >= 2.47 wants a callable class for custom collation (run in its prefetch threads).
    from ray.data.collate_fn import NumpyBatchCollateFn as _CollateBase
except Exception:  # pragma: no cover - older Ray
    _CollateBase = object


class Collate(_CollateBase):
    """:func:`collate` as the callable class ``DataIterator.iter_torch_batches(collate_fn=...)`` expects.

    ``augment_seed`` (training only): clips are augmented per ``data.augment`` with a generator seeded by it, so
    every batch draws fresh transforms and a run is repeatable (give each rank its own seed)."""

    def __init__(self, data: DataConfig, include_keys: bool = False, augment_seed: Optional[int | Sequence[int]] = None):
        self.data, self.include_keys = data, include_keys
        self.rng = np.random.default_rng(augment_seed) if augment_seed is not None else None
        if self.rng is not None and data.augment.object_dropout > 0:
            object_dropout_tokens(data.tokenizer)  # a tokenizer without a usable unknown token fails here, at start

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return collate(batch, self.data, self.include_keys, self.rng)
