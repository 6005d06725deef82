"""The training data pipeline on Ray Data: shards -> join annotations -> decode + sample frames -> tokenise.

    pipe = training_dataset(cfg, split="train")           # ClipPipeline(dataset, accounting)
    run_training(cfg, run_dir, {"train": pipe.dataset})    # each worker: train/batches.py's BatchStream
    pipe.report()                                          # counts (and keys) by reason, on the driver

Graph (streaming, nothing global):

1. ``from_items(shard URIs)``, one block per shard; ``flat_map`` (a Ray task per shard) streams the tar
   (:func:`shards.iter_clips`), reads that shard's annotation file ``<data.annotations>/<stem>.parquet`` in the
   same task and joins by key in memory. When the shard has no annotation file the json ground truth stands in
   ("truth" annotation: actions = ``synthkitchen.actions``, kept iff ``instructional``; negatives from the
   ``truth_negatives`` function the caller passes, e.g. ``instraction.curation.negatives.negatives_for``, else
   none). A clip without either is dropped as ``no_annotation``. The split keeps
   ``is_holdout(video_id) == (split == "bench")``.
   Clips of one whole video travel as ONE row (video bytes once, windows as json) so the bytes are not copied
   per segment; the decode actor cuts every window by seeking.
2. ``map_batches(DecodeClips)`` on an actor pool (``data.decode_concurrency`` actors x ``data.decode_num_cpus``)
   decodes ``data.num_frames`` frames over each clip's window and tokenises caption, negatives, verb phrases
   and the MAM input. An actor that dies is restarted and its batch retried (tests/test_pipeline.py kills one
   mid-epoch). Ray logs an error line at actor start ("constructor arguments in the object store and
   max_restarts > 0"): Ray Data itself hands every pool actor the UDF and its DataContext through ray.put, whatever
   the UDF's arguments; the driver owns those objects, so a restart finds them while the driver's node lives. Output rows (numpy): ``key`` str, ``video`` uint8 [T,H,W,3] (uint8 through the object
   store: 4x smaller than float; :mod:`examples` normalises on the worker), ``text_ids`` int32 [L],
   ``text_mask`` bool [L], ``neg_ids`` int32 [Nn,L], ``neg_mask`` bool [Nn], ``verb_ids`` int32 [M,Lv],
   ``verb_mask`` bool [M,Lv], ``verb_count`` int32, ``mam_ids`` int32 [L], ``mam_labels`` int32 [L].

With ``data.frames`` (the store of :mod:`instraction.data.frames`, written once by ``jobs/extract_frames.py``) the
read task streams the tar without video, joins as above, then looks each kept clip up in the shard's frames file
and emits one row per clip (window json + the stored frames); the actors turn the stored JPEG/raw frames into the
same uint8 [T,H,W,3] instead of decoding, and the output rows are the same. A clip the store cannot serve is
dropped, counted (never decoded on the fly: that is the ~50 cores per GPU the store exists to avoid; re-run the
extraction): ``missing_frames``, ``stale_frames`` (extracted from other shard bytes or settings),
``bad_frames_file``, ``bad_frames`` (a blob that does not decode), or the reason extraction dropped it for
(``undecodable_video``, ``decode_error``: the same as decoding here would give).

With ``data.materialize`` the graph runs once, inside :func:`training_dataset` (``Dataset.materialize()``), and
every epoch iterates the stored blocks instead of restarting the read/decode pipeline; the rows are the same. As
nothing trains beside it, the decode step there is a task function (:func:`decode_in_task`, the same
:class:`DecodeClips`) that Ray Data fuses into the read task: each shard is read and decoded by one task, as many at
once as ``data.read_num_cpus`` lets fit (one actor decoding every shard left a core idle: README, session 15).

Accounting: every clip read ends in exactly one of delivered / excluded_by_split / dropped[reason]. Reasons:
the reader's (``corrupt_tar``, ``missing_mp4``, ``empty_video``, ``missing_json``, ``bad_json``, ``bad_caption``,
``duplicate_key``, ``unreadable_shard``), the join's (``missing_annotation``, ``no_annotation``,
``bad_annotation_file``, ``<decision>:<reason>`` for clips curation did not keep, ``quarantined:negatives_error``
when ``truth_negatives`` raised) and the decoder's
(``undecodable_video``, ``decode_error``). Read tasks send one summary per shard and decode actors their failures
(by key) to an :class:`Accounting` actor (:func:`make_accounting`); both overwrite rather than add, so task
retries and repeated epochs do not double-count. ``pipe.report()`` on the driver returns ``{"clips_read", "excluded_by_split", "to_decode", "delivered", "dropped":
{reason: n}, "dropped_total", "dropped_keys": {reason: [key, ...]}}``: after a full pass ``clips_read ==
delivered + excluded_by_split + dropped_total``; :func:`format_report` prints it. The share of step time spent
waiting for data is measured on the consumer side (:class:`instraction.train.batches.BatchStream`).
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Optional

import numpy as np

from instraction import storage
from instraction.data import shards as shard_io
from instraction.data.config import DataConfig
from instraction.data.split import is_holdout

log = logging.getLogger(__name__)

SPLITS = ("train", "bench", "all")
_ANNOTATION_COLUMNS = ("key", "decision", "reason", "actions", "verb_altered", "order_swapped", "primary_object")


# ---------------------------------------------------------------------------------------------- accounting


class Accounting:
    """Counts of where every clip went, by shard (read stage) and by key (decode stage); idempotent updates."""

    def __init__(self, key_limit: int = 1000):
        self.key_limit = key_limit
        self.shards: dict[str, dict] = {}
        self.decode_failures: dict[str, str] = {}

    def record_shard(self, shard_uri: str, summary: dict) -> None:
        self.shards[shard_uri] = summary

    def record_decode(self, failures: list[tuple[str, str]]) -> None:
        self.decode_failures.update(dict(failures))

    def report(self) -> dict:
        dropped: Counter = Counter()
        keys: dict[str, list[str]] = defaultdict(list)
        totals: Counter = Counter()
        for summary in self.shards.values():
            totals.update({k: summary[k] for k in ("clips_read", "excluded_by_split", "to_decode")})
            dropped.update(summary["dropped"])
            for reason, ks in summary["keys"].items():
                keys[reason].extend(ks[: max(0, self.key_limit - len(keys[reason]))])
        for key, reason in sorted(self.decode_failures.items()):
            dropped[reason] += 1
            if len(keys[reason]) < self.key_limit:
                keys[reason].append(key)
        return {
            "shards": len(self.shards),
            "clips_read": totals["clips_read"],
            "excluded_by_split": totals["excluded_by_split"],
            "to_decode": totals["to_decode"],
            "delivered": totals["to_decode"] - len(self.decode_failures),
            "dropped": dict(sorted(dropped.items())),
            "dropped_total": sum(dropped.values()),
            "dropped_keys": {r: sorted(k) for r, k in sorted(keys.items())},
        }


def make_accounting(key_limit: int = 1000):
    """A :class:`Accounting` Ray actor (no CPU reserved). Needs a running Ray."""
    import ray

    return ray.remote(num_cpus=0)(Accounting).remote(key_limit)


class _ShardTally:
    def __init__(self, key_limit: int):
        self.key_limit = key_limit
        self.counts: Counter = Counter()
        self.keys: dict[str, list[str]] = defaultdict(list)
        self.clips_read = self.excluded = self.to_decode = 0

    def drop(self, reason: str, key: str) -> None:
        self.counts[reason] += 1
        if len(self.keys[reason]) < self.key_limit:
            self.keys[reason].append(key)

    def summary(self) -> dict:
        return {"clips_read": self.clips_read, "excluded_by_split": self.excluded, "to_decode": self.to_decode,
                "dropped": dict(self.counts), "keys": dict(self.keys)}


# ---------------------------------------------------------------------------------------------- annotations


def load_annotations(shard_uri: str, data: DataConfig) -> tuple[Optional[dict[str, dict]], Optional[str]]:
    """``({key: annotation}, None)`` from ``<data.annotations>/<stem>.parquet``; ``(None, None)`` when the shard
    has no annotation file; ``(None, reason)`` when the file exists but cannot be read."""
    import pyarrow.parquet as pq

    if not data.annotations:
        return None, None
    path = f"{data.annotations.rstrip('/')}/{shard_io.shard_stem(shard_uri)}.parquet"
    try:
        fs, path = storage.open_filesystem(path, data.s3)
        if not fs.exists(path):
            return None, None
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        names = [c for c in _ANNOTATION_COLUMNS if c in table.column_names]
        if "key" not in names or "decision" not in names:
            raise ValueError(f"annotation file lacks key/decision columns: {table.column_names}")
        return {row["key"]: row for row in table.select(names).to_pylist()}, None
    except Exception as err:
        log.warning("unreadable annotation file %s", storage.redact(f"{path}: {type(err).__name__}: {err}"))
        return None, "bad_annotation_file"


NegativesFn = Callable[..., tuple[list[str], list[str]]]
"""``fn(caption, actions, key=...) -> (verb_altered, order_swapped)``, as ``curation.negatives.negatives_for``."""


def truth_annotation(clip: dict, negatives_fn: Optional[NegativesFn] = None) -> Optional[dict]:
    """An annotation row from a clip's SynthKitchen ground truth (None for real data, which has none). A clip whose
    ``negatives_fn`` raises is quarantined (``negatives_error``), so the failure shows in the accounting."""
    if not clip.get("truth"):
        return None
    truth = json.loads(clip["truth"])
    actions = [str(a) for a in truth.get("actions") or []]
    instructional = bool(truth.get("instructional", True))
    kept = instructional and bool(actions)
    verb_altered, order_swapped = ([], [])
    if kept and negatives_fn is not None:
        try:
            verb_altered, order_swapped = negatives_fn(clip["caption"], actions, key=clip["key"])
        except Exception as err:  # a negative generator bug must not take the shard down: counted instead
            log.warning("truth negatives failed for %s: %s: %s", clip["key"], type(err).__name__, err)
            return {"key": clip["key"], "decision": "quarantined", "reason": "negatives_error", "actions": actions,
                    "verb_altered": [], "order_swapped": [], "primary_object": truth.get("object")}
    return {"key": clip["key"], "decision": "kept" if kept else "dropped",
            "reason": "truth" if kept else ("no_actions" if instructional else "not_instructional"), "actions": actions,
            "verb_altered": list(verb_altered), "order_swapped": list(order_swapped),
            "primary_object": truth.get("object")}


# ---------------------------------------------------------------------------------------------- read stage


def _joined_clips(shard_uri: str, data: DataConfig, holdout: tuple[float, int], split: str, with_video: bool,
                  tally: _ShardTally, truth_negatives: Optional[NegativesFn] = None) -> Iterator[tuple[dict, dict]]:
    """``(clip row, annotation)`` for each clip of the shard that survives errors, split and curation."""
    table, table_error = load_annotations(shard_uri, data)
    if table is None and not table_error:
        log.info("no annotation file for %s: the json ground truth stands in", shard_io.shard_stem(shard_uri))
    for clip in shard_io.iter_clips(shard_uri, data.s3, with_video=with_video):
        tally.clips_read += 1
        key = clip["key"]
        if clip["error"]:
            tally.drop(clip["error"], key)
            continue
        if split != "all" and is_holdout(clip["video_id"], *holdout) != (split == "bench"):
            tally.excluded += 1
            continue
        if table_error:
            tally.drop(table_error, key)
            continue
        ann = table.get(key) if table is not None else truth_annotation(clip, truth_negatives)
        if ann is None:
            tally.drop("missing_annotation" if table is not None else "no_annotation", key)
            continue
        if ann["decision"] != "kept":
            tally.drop(f"{ann['decision']}:{ann.get('reason') or 'unspecified'}", key)
            continue
        yield clip, ann


def _window(clip: dict, ann: dict) -> dict:
    return {"key": clip["key"], "video_id": clip["video_id"], "start": clip["start"], "end": clip["end"],
            "caption": clip["caption"], "actions": list(ann.get("actions") or []),
            "verb_altered": list(ann.get("verb_altered") or []), "order_swapped": list(ann.get("order_swapped") or []),
            "primary_object": ann.get("primary_object")}


def read_shard(item: dict, *, data: DataConfig, holdout: tuple[float, int], split: str, per_video: bool,
               accounting=None, key_limit: int = 1000, frames_store: bool = False,
               truth_negatives: Optional[NegativesFn] = None) -> Iterator[dict]:
    """flat_map body: one shard -> joined rows. ``per_video``: one row per video ``{video_key, shard, mp4,
    windows (json list of clip windows)}``; ``frames_store``: one row per clip ``{key, shard, window (json),
    frames (the stored blobs)}`` from ``data.frames``, a clip without usable frames dropped with the store's reason;
    else one row per clip (no video bytes)."""
    tally = _ShardTally(key_limit)
    shard = shard_io.shard_stem(item["shard"])
    group_key, group_mp4, windows = None, None, []
    store = None
    if frames_store:
        from instraction.data.frames import StoreReader

        store = StoreReader(item["shard"], data)
    for clip, ann in _joined_clips(item["shard"], data, holdout, split, per_video, tally, truth_negatives):
        if store is not None:
            blobs, reason = store.get(clip["key"])
            if reason:
                tally.drop(reason, clip["key"])
                continue
            tally.to_decode += 1
            yield {"key": clip["key"], "shard": shard, "window": json.dumps(_window(clip, ann)), "frames": blobs}
            continue
        if not per_video:
            tally.to_decode += 1
            yield {"shard": shard, "video_key": clip["video_key"], **_window(clip, ann)}
            continue
        if clip["video_key"] != group_key and windows:
            yield {"video_key": group_key, "shard": shard, "mp4": group_mp4, "windows": json.dumps(windows)}
            windows = []
        group_key, group_mp4 = clip["video_key"], clip["mp4"]
        windows.append(_window(clip, ann))
        tally.to_decode += 1
    if windows:
        yield {"video_key": group_key, "shard": shard, "mp4": group_mp4, "windows": json.dumps(windows)}
    if accounting is not None:
        import ray

        ray.get(accounting.record_shard.remote(item["shard"], tally.summary()))  # by URI: stems may repeat


def _shard_dataset(cfg, split: str):
    import ray

    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose one of {SPLITS}")
    uris = shard_io.list_shards(cfg.data.shards, cfg.data.s3)
    if not uris:
        raise FileNotFoundError(f"no shards at data.shards={storage.redact(cfg.data.shards)!r}")
    if split == "train":
        random.Random(cfg.run.seed).shuffle(uris)  # shard order; rows within a shard stay in tar order
    return ray.data.from_items([{"shard": u} for u in uris], override_num_blocks=len(uris))


def annotated_clips(cfg, split: str = "all", accounting=None, truth_negatives: Optional[NegativesFn] = None):
    """Ray Dataset of joined, kept clip rows without video bytes: ``shard, video_key, key, video_id, start, end,
    caption, actions, verb_altered, order_swapped, primary_object``."""
    fn = partial(read_shard, data=cfg.data, holdout=(cfg.bench.holdout_fraction, cfg.bench.seed), split=split,
                 per_video=False, accounting=accounting, truth_negatives=truth_negatives)
    return _shard_dataset(cfg, split).flat_map(fn, num_cpus=cfg.data.read_num_cpus)


# ---------------------------------------------------------------------------------------------- decode stage


def pick_negatives(verb_altered: list[str], order_swapped: list[str], mode: str, limit: int,
                   rng: random.Random) -> list[str]:
    """Up to ``limit`` hard negatives of the kinds ``mode`` names, both kinds interleaved when ``mode == "both"``."""
    pools = {"both": [verb_altered, order_swapped], "verb_altered": [verb_altered],
             "order_swapped": [order_swapped], "none": []}[mode]
    shuffled = [rng.sample(p, len(p)) for p in pools]
    out: list[str] = []
    for i in range(max((len(p) for p in shuffled), default=0)):
        out += [p[i] for p in shuffled if i < len(p)]
    return out[:limit]


def decode_window(mp4: bytes, win: dict, data: DataConfig) -> tuple[Optional[np.ndarray], Optional[str]]:
    """``(uint8 [T, size, size, 3], None)`` for a clip window of a video, or ``(None, reason)``: the one decoder of
    the training actors and of the frames store (``jobs/extract_frames.py``), so both give the same frames."""
    from instraction.data.video import decode_frames

    try:
        frames = decode_frames(mp4, data.num_frames, data.size, win["start"], win["end"])
        if frames.shape != (data.num_frames, data.size, data.size, 3) or frames.dtype != np.uint8:
            raise RuntimeError(f"decode_frames returned {frames.dtype} {frames.shape}")
    except ValueError as err:
        log.warning("undecodable %s: %s", win["key"], storage.redact(str(err)))
        return None, "undecodable_video"
    except Exception as err:  # never let one clip take the actor (or the extraction task) down
        log.warning("decode error %s: %s: %s", win["key"], type(err).__name__, storage.redact(str(err)))
        return None, "decode_error"
    return frames, None


class DecodeClips:
    """Ray Data actor: video rows (bytes + windows), or clip rows of stored frames (``data.frames``) -> one
    training row per clip window (module docstring)."""

    def __init__(self, data: DataConfig, seed: int = 0, accounting=None):
        from instraction.data.tokenizer import shared_tokenizer

        self.data, self.seed, self.accounting = data, seed, accounting
        self.tokenizer = shared_tokenizer(data.tokenizer)

    def _clips(self, batch) -> Iterator[tuple[dict, Optional[np.ndarray], Optional[str]]]:
        """``(window, frames, None)`` or ``(window, None, reason)`` for every clip of the batch."""
        d = self.data
        if "frames" in batch.column_names:  # the frames store: JPEG/raw -> uint8, no video decoding
            from instraction.data.frames import decode_clip

            for row in batch.to_pylist():
                win = json.loads(row["window"])
                try:
                    yield win, decode_clip(row["frames"], d.num_frames, d.size, d.frames_quality == 0), None
                except Exception as err:
                    log.warning("bad stored frames %s: %s", win["key"], storage.redact(str(err)))
                    yield win, None, "bad_frames"
            return
        for row in batch.to_pylist():
            for win in json.loads(row["windows"]):
                yield (win, *decode_window(row["mp4"], win, d))

    def __call__(self, batch) -> dict[str, np.ndarray]:
        d = self.data
        clips, videos, failures = [], [], []
        for win, frames, reason in self._clips(batch):
            if reason:
                failures.append((win["key"], reason))
                continue
            clips.append(win)
            videos.append(frames)
        if failures and self.accounting is not None:
            import ray

            ray.get(self.accounting.record_decode.remote(failures))
        out = self.tokenise(clips)
        out["video"] = np.stack(videos) if videos else np.zeros((0, d.num_frames, d.size, d.size, 3), np.uint8)
        return out

    def tokenise(self, clips: list[dict]) -> dict[str, np.ndarray]:
        """Caption, negatives, verb phrases and MAM arrays for ``clips`` (windows with actions/negatives)."""
        d, tok = self.data, self.tokenizer
        n, L, Nn, M, Lv = len(clips), d.max_text_len, d.max_negatives, d.max_verbs, d.max_verb_len
        captions = [c["caption"] for c in clips]
        text_ids, text_mask = tok(captions, L) if n else _empty_ids(0, L)
        negs = [pick_negatives(c["verb_altered"], c["order_swapped"], d.hard_negatives, Nn,
                               random.Random(zlib.crc32(f"{self.seed}:{c['key']}".encode()))) for c in clips]
        neg_ids = np.full((n, Nn, L), tok.pad_id, np.int32)
        neg_mask = np.zeros((n, Nn), bool)
        neg_token_mask = np.zeros((n, Nn, L), bool)  # the tokenizer's own: with CLIP, pad == end token
        flat = [t for ns in negs for t in ns]
        if flat:
            ids, mask = tok(flat, L)
            rows = [(i, j) for i, ns in enumerate(negs) for j in range(len(ns))]
            for (i, j), value, m in zip(rows, ids.numpy(), mask.numpy()):
                neg_ids[i, j], neg_mask[i, j], neg_token_mask[i, j] = value, True, m
        verbs = [c["actions"][:M] for c in clips]
        verb_ids = np.full((n, M, Lv), tok.pad_id, np.int32)
        verb_mask = np.zeros((n, M, Lv), bool)
        flat = [v for vs in verbs for v in vs]
        if flat:
            ids, mask = tok(flat, Lv)
            rows = [(i, j) for i, vs in enumerate(verbs) for j in range(len(vs))]
            for (i, j), value, m in zip(rows, ids.numpy(), mask.numpy()):
                verb_ids[i, j], verb_mask[i, j] = value, m
        # MAM (paper eq. 8-9): mask the action verbs (first word of each verb phrase) in the caption.
        mam_ids, mam_labels = tok.mask_words(captions, [[a.split()[0] for a in c["actions"] if a.split()]
                                                        for c in clips], L) if n else _empty_ids(0, L)
        return {
            "key": np.array([c["key"] for c in clips], dtype=object),
            "text_ids": np.asarray(text_ids, np.int32), "text_mask": np.asarray(text_mask, bool),
            "neg_ids": neg_ids, "neg_mask": neg_mask, "neg_token_mask": neg_token_mask,
            "verb_ids": verb_ids, "verb_mask": verb_mask,
            "verb_count": np.array([len(v) for v in verbs], np.int32),
            "mam_ids": np.asarray(mam_ids, np.int32), "mam_labels": np.asarray(mam_labels, np.int32),
        }


def _empty_ids(n: int, length: int):
    return np.zeros((n, length), np.int32), np.zeros((n, length), bool)


@dataclass
class ClipPipeline:
    """The training dataset and the actor that accounts for every clip it reads."""

    dataset: Any
    accounting: Any

    def report(self) -> dict:
        import ray

        return ray.get(self.accounting.report.remote())


def training_dataset(cfg, split: str = "train", accounting=None,
                     truth_negatives: Optional[NegativesFn] = None) -> ClipPipeline:
    """Shards joined with annotations, decoded and tokenised: rows of numpy arrays (module docstring).
    ``truth_negatives`` makes the hard negatives of shards without an annotation file (SynthKitchen's truth).

    Pass ``pipe.dataset`` to ``TorchTrainer(datasets={"train": ...})``; each worker reads its part with
    ``ray.train.get_dataset_shard("train")`` through :class:`instraction.train.batches.BatchStream`.
    """
    import ray

    accounting = accounting or make_accounting()
    store = bool(cfg.data.frames)  # read the frames store instead of decoding video
    read = partial(read_shard, data=cfg.data, holdout=(cfg.bench.holdout_fraction, cfg.bench.seed), split=split,
                   per_video=not store, accounting=accounting, frames_store=store, truth_negatives=truth_negatives)
    videos = _shard_dataset(cfg, split).flat_map(read, num_cpus=cfg.data.read_num_cpus)
    decode = {"data": cfg.data, "seed": cfg.run.seed, "accounting": accounting}
    if not cfg.data.materialize:
        decoded = videos.map_batches(DecodeClips, fn_constructor_kwargs=decode, batch_size=cfg.data.decode_batch_size,
                                     batch_format="pyarrow", num_cpus=cfg.data.decode_num_cpus,
                                     compute=ray.data.ActorPoolStrategy(size=cfg.data.decode_concurrency))
        return ClipPipeline(decoded, accounting)
    # read + decode run once, here; epochs then iterate the stored blocks. Nothing trains beside them, so a shard is
    # decoded in its own read task (Ray Data fuses the two maps): as many shards at once as read tasks fit, instead
    # of every shard through the decode actors. In order: the blocks, so each worker's split and the order it
    # permutes, are then the same on every run of a config (repeatable runs at a seed).
    # batch_size None: a batch size would keep Ray Data from fusing a map after a flat_map (it could change row counts)
    decoded = videos.map_batches(decode_in_task, fn_kwargs=decode, batch_size=None, batch_format="pyarrow",
                                 num_cpus=cfg.data.read_num_cpus)
    decoded.context.execution_options.preserve_order = True
    return ClipPipeline(decoded.materialize(), accounting)


def decode_in_task(batch, data: DataConfig, seed: int, accounting=None) -> dict[str, np.ndarray]:
    """:class:`DecodeClips` as a task function (``data.materialize``); the tokenizer is built once per process."""
    return DecodeClips(data, seed, accounting)(batch)


def format_report(report: dict) -> str:
    """One readable line per reason, for logs and the end of a run."""
    lines = [f"clips read {report['clips_read']}: delivered {report['delivered']}, excluded by split "
             f"{report['excluded_by_split']}, dropped {report['dropped_total']}"]
    for reason, count in report["dropped"].items():
        examples = report["dropped_keys"].get(reason, [])[:5]
        lines.append(f"  {reason}: {count}  e.g. {', '.join(examples)}")
    return "\n".join(lines)
