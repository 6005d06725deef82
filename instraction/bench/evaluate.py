"""Score a video-language model on InstrAct Bench (paper Sec. 5, 6): Semantic, Logic, Dynamics, temporal controls
and the alignment analysis of Sec. 6.3 (Fig. 7-8).

    tables = build.load(build.default_out(cfg))
    videos = BenchVideos(cfg, tables)                         # streams the needed clips, shard by shard
    scorer = InstrActionScorer(model, build_tokenizer(cfg.data.tokenizer), cfg.data)   # or BackboneScorer
    results = evaluate(scorer, tables, videos, cfg)

Any object with ``encode_video(video float [B,T,3,H,W] normalised) -> [B,E]`` and ``encode_text(texts) -> [N,E]``
is a :class:`Scorer`; ``frame_embeddings`` ([B,T,E]) and ``action_tokens`` ([B,K,E]) are optional and feed the
alignment analysis. Scores are cosine similarities.

Temporal controls (every task is scored again on them; the same inputs for every model, seeded by bench.seed and
the clip key): ``reversed`` frames in reverse order; ``shuffled`` a fixed random permutation per clip, never the
identity when T > 1; ``static`` ONE randomly chosen frame repeated T times (an averaged frame is no static control:
it keeps the motion trail). ``temporal_gap`` = normal minus shuffled of each task's headline metric, so a model that
ignores time shows a gap of 0.

Memory: videos are consumed batch by batch and only embeddings are kept, so the Dynamics split at paper scale
(16k clips) never sits in memory as frames.
"""

from __future__ import annotations

import logging
import zlib
from contextlib import closing
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from instraction.bench.alignment import align_embeddings, alignment_clips, alignment_costs
from instraction.bench.build import BenchTables
from instraction.bench.metrics import mcq_metrics, pooled_retrieval_metrics
from instraction.bench.scorers import BackboneScorer, InstrActionScorer, Scorer  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

TASKS = ("semantic", "logic", "dynamics")
CONTROLS = ("reversed", "shuffled", "static")
HEADLINE = {"semantic": "R@1", "logic": "ACC", "dynamics": "Mean_R@1"}
"""The metric each task's temporal gap (and the paper's tables) lead with."""
NORMAL = "normal"


# ------------------------------------------------------------------------------------------------------- videos


def _needed_clips(tables: BenchTables) -> dict[str, tuple[str, Optional[float], Optional[float]]]:
    """key -> (shard stem, start, end) of every clip any task uses."""
    need: dict[str, tuple[str, Optional[float], Optional[float]]] = {}
    for name in TASKS:
        frame = getattr(tables, name)
        if len(frame) == 0:
            continue
        for key, shard, start, end in zip(frame["key"], frame["shard"], frame["start"], frame["end"]):
            need[str(key)] = (str(shard), _seconds(start), _seconds(end))
    return need


def _clip_of_sample(clip_key: str, sample_key: str) -> bool:
    """A whole video's clips are keyed ``f"{sample}_{i:03d}"`` (team contract)."""
    suffix = clip_key[len(sample_key) + 1:]
    return clip_key.startswith(f"{sample_key}_") and len(suffix) == 3 and suffix.isdigit()


def _seconds(value) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


class BenchVideos:
    """The clips the bench needs, decoded (``data.num_frames`` frames at ``data.size``) shard by shard.

    Iterating yields ``(key, uint8 [T,H,W,3])``; only the shards holding bench clips are opened and each stops being
    read once its clips are found. A clip that cannot be loaded is recorded in ``failures`` (key -> reason:
    ``shard_not_found``, ``missing_in_shard``, ``undecodable``, ``bad_frames`` or the shard reader's own reason such
    as ``corrupt_tar``) and its questions are skipped by :func:`evaluate`, which reports them.
    """

    def __init__(self, cfg, tables: BenchTables, workers: int = 2):
        self.cfg, self.workers = cfg, max(1, workers)
        self.needed = _needed_clips(tables)
        self.failures: dict[str, str] = {}

    def _read_shard(self, uri: Optional[str], clips: dict) -> tuple[list, dict[str, str]]:
        from instraction.data.shards import iter_clips
        from instraction.data.video import decode_frames

        d = self.cfg.data
        found, failures, pending = [], {}, set(clips)
        if uri is None:
            return [], {key: "shard_not_found" for key in clips}
        shard_error = None  # a tar that breaks (or cannot be opened) explains every clip not reached
        rows = iter_clips(uri, d.s3, with_video=True)
        with closing(rows):  # stopping early closes the shard's stream now, not at garbage collection
            for row in rows:
                key = row["key"]
                if row["error"] is not None:
                    if row["error"] in ("corrupt_tar", "unreadable_shard"):
                        shard_error = row["error"]
                    sample = row["video_key"] or key
                    for k in [k for k in pending if k == key or _clip_of_sample(k, sample)]:
                        failures[k] = row["error"]
                        pending.discard(k)
                    continue
                if key not in pending:
                    continue
                pending.discard(key)
                _, start, end = clips[key]
                try:
                    frames = decode_frames(row["mp4"], d.num_frames, d.size, start, end)
                except Exception as err:  # bad bytes: counted, never raised (ValueError per the contract)
                    log.warning("bench clip %s undecodable: %s", key, err)
                    failures[key] = "undecodable"
                    continue
                if frames.shape != (d.num_frames, d.size, d.size, 3) or frames.dtype != np.uint8:
                    failures[key] = "bad_frames"
                    continue
                found.append((key, frames))
                if not pending:
                    break
        failures.update({key: shard_error or "missing_in_shard" for key in pending})
        return found, failures

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        from instraction.data.shards import list_shards, shard_stem

        by_shard: dict[str, dict] = defaultdict(dict)
        for key, clip in self.needed.items():
            by_shard[clip[0]][key] = clip
        uris = {shard_stem(u): u for u in list_shards(self.cfg.data.shards, self.cfg.data.s3)}
        self.failures.clear()
        todo = deque(sorted(by_shard.items()))
        with ThreadPoolExecutor(self.workers) as pool:
            # at most `workers` shards ahead of the consumer: decoded frames never pile up in memory
            running: deque = deque()
            while todo or running:
                while todo and len(running) < self.workers:
                    stem, clips = todo.popleft()
                    running.append(pool.submit(self._read_shard, uris.get(stem), clips))
                found, failures = running.popleft().result()
                self.failures.update(failures)
                yield from found


def load_bench_videos(cfg, tables: BenchTables, workers: int = 2) -> "LoadedVideos":
    """Every clip the bench needs in memory: key -> uint8 [T,H,W,3] (``.failures``: key -> reason). For small
    benches, tests and plots; :func:`evaluate` also takes a :class:`BenchVideos` stream."""
    return LoadedVideos(BenchVideos(cfg, tables, workers))


class LoadedVideos(dict):
    """A dict key -> frames that also carries ``failures`` (key -> reason) of the clips it lacks."""

    def __init__(self, items: Iterable = (), failures: Optional[dict] = None):
        super().__init__(items)  # iterates a BenchVideos stream, which fills its failures as it goes
        self.failures = dict(failures if failures is not None else getattr(items, "failures", {}))


# ----------------------------------------------------------------------------------------------------- controls


def control_indices(control: str, num_frames: int, key: str, seed: int) -> np.ndarray:
    """Frame order [T] of ``control`` for clip ``key``: same for every model (seeded by ``seed`` and the key)."""
    t = num_frames
    if control == NORMAL:
        return np.arange(t)
    if control == "reversed":
        return np.arange(t)[::-1].copy()
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8")), CONTROLS.index(control) if control in CONTROLS else 99])
    if control == "shuffled":
        if t < 2:
            return np.arange(t)
        while True:  # never the identity, else a clip would count as shuffled without being shuffled
            perm = rng.permutation(t)
            if (perm != np.arange(t)).any():
                return perm
    if control == "static":
        return np.full(t, int(rng.integers(t)))  # ONE frame, repeated: no motion trail survives
    raise ValueError(f"unknown temporal control {control!r}; choose from {CONTROLS}")


def _normalise(frames: np.ndarray, data_cfg) -> torch.Tensor:
    from instraction.data.examples import normalise_video

    return normalise_video(frames, data_cfg)


# ------------------------------------------------------------------------------------------------------ scoring


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _clip_stream(videos, needed: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    items = ((k, videos[k]) for k in sorted(needed) if k in videos) if isinstance(videos, Mapping) else iter(videos)
    seen = set()
    for key, frames in items:
        if key in needed and key not in seen:
            seen.add(key)
            yield key, np.asarray(frames)


def embed_texts(scorer, texts: Iterable[str], batch_size: int) -> dict[str, np.ndarray]:
    """Unique texts -> L2-normalised embeddings [E] (cosine scores downstream)."""
    unique = sorted(set(map(str, texts)))
    out: dict[str, np.ndarray] = {}
    for batch in _batches(unique, batch_size):
        emb = F.normalize(torch.as_tensor(scorer.encode_text(batch)).float().cpu(), dim=-1).numpy()
        out.update(zip(batch, emb))
    return out


def _mcq(frame, video_emb: dict, text_emb: dict) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """(scores [Q,Cmax] padded with -inf, answers [Q], questions skipped for a missing video, the scored questions'
    row positions in ``frame`` [Q])."""
    rows, answers, skipped, positions = [], [], 0, []
    if len(frame) == 0:
        return np.zeros((0, 1)), np.zeros(0, dtype=np.int64), 0, np.zeros(0, dtype=np.int64)
    for i, (key, cands, answer) in enumerate(zip(frame["key"], frame["candidates"], frame["answer"])):
        v = video_emb.get(str(key))
        if v is None:
            skipped += 1
            continue
        rows.append(np.stack([text_emb[str(c)] for c in cands]) @ v)
        answers.append(int(answer))
        positions.append(i)
    width = max((len(r) for r in rows), default=1)
    # Logic has 3-4 candidates: -inf padding never ties with a finite answer (ties count against the model).
    scores = np.full((len(rows), width), -np.inf)
    for i, r in enumerate(rows):
        scores[i, : len(r)] = r
    return scores, np.asarray(answers, dtype=np.int64), skipped, np.asarray(positions, dtype=np.int64)


def compositional_metrics(frame, scores: np.ndarray, answers: np.ndarray, positions: np.ndarray) -> dict | None:
    """{"seen": metrics, "unseen": metrics, "questions": {...}}: the scored questions split by whether their clip
    has a verb-object pair no training clip has (the bench's ``unseen_pairs``); None for a bench built without it."""
    if "unseen_pairs" not in getattr(frame, "columns", ()):
        return None
    unseen = np.asarray([len(p) > 0 for p in frame["unseen_pairs"]], dtype=bool)[positions]
    return {"seen": mcq_metrics(scores[~unseen], answers[~unseen]),
            "unseen": mcq_metrics(scores[unseen], answers[unseen]),
            "questions": {"seen": int((~unseen).sum()), "unseen": int(unseen.sum())}}


def _pools(frame, video_emb: dict, text_emb: dict) -> tuple[list[dict], Counter]:
    """Dynamics pools with their similarity [n,n] (rows captions, columns videos); clips without video are left out,
    pools left with < 2 clips are skipped (one clip retrieves itself by construction)."""
    pools, skipped = [], Counter()
    if len(frame) == 0:
        return pools, skipped
    for obj, group in frame.groupby("object", sort=True):
        keep = [i for i, k in enumerate(group["key"]) if str(k) in video_emb]
        skipped["clips_missing_video"] += len(group) - len(keep)
        if len(keep) < 2:
            skipped["pools_too_small"] += 1
            continue
        keys = [str(group["key"].iloc[i]) for i in keep]
        texts = np.stack([text_emb[str(group["caption"].iloc[i])] for i in keep])
        sim = texts @ np.stack([video_emb[k] for k in keys]).T
        pools.append({"object": str(obj), "category": str(group["category"].iloc[0]), "sim": sim})
    return pools, skipped


def pool_size_curve(sims: Sequence[np.ndarray], seed: int, repeats: int = 5) -> dict[str, list]:
    """Fig. 6: Mean_R@1 when each pool is sub-sampled to 2, 4, 8, ... clips (``repeats`` seeded draws per pool and
    size; a pool joins a size only when it holds that many clips). Returns sizes, Mean_R@1, chance (100/size) and
    the number of pools behind each point."""
    largest = max((s.shape[0] for s in sims), default=0)
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"sizes": [], "Mean_R@1": [], "chance": [], "pools": []}
    size = 2
    while size <= largest:
        subs = []
        for sim in sims:
            n = sim.shape[0]
            if n < size:
                continue
            draws = 1 if n == size else repeats
            for _ in range(draws):
                idx = np.sort(rng.choice(n, size, replace=False))
                subs.append(sim[np.ix_(idx, idx)])
        out["sizes"].append(size)
        out["Mean_R@1"].append(pooled_retrieval_metrics(subs)["Mean_R@1"])
        out["chance"].append(100.0 / size)
        out["pools"].append(sum(s.shape[0] >= size for s in sims))
        size *= 2
    return out


def _chance(scored: dict) -> dict[str, dict[str, float]]:
    """Expected metrics of a random scorer (no ties) on the scored questions / pools."""
    out: dict[str, dict[str, float]] = {}
    for task in ("semantic", "logic"):
        counts = np.asarray(scored[task], dtype=np.float64)
        if counts.size:
            r1 = float(100 * np.mean(1 / counts))
            out[task] = {"R@1": r1, "ACC": r1, "R@5": float(100 * np.mean(np.minimum(5, counts) / counts)),
                         "MeanR": float(np.mean((counts + 1) / 2))}
    sizes = np.asarray(scored["dynamics"], dtype=np.float64)
    if sizes.size:
        out["dynamics"] = {}
        for k in (1, 5, 10):
            r = float(100 * np.minimum(k, sizes).sum() / sizes.sum())
            out["dynamics"].update({f"T2V_R@{k}": r, f"V2T_R@{k}": r, f"Mean_R@{k}": r})
    return out


def _embed_videos(scorer, videos, needed: set[str], conditions: Sequence[str], align_keys: Mapping, cfg, seed: int
                  ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """One pass over the clips: {condition: {key: [E]}} and, for the alignment clips, their frame / latent
    embeddings (normal order). Frames are dropped batch by batch."""
    video_emb: dict[str, dict[str, np.ndarray]] = {c: {} for c in conditions}
    aligned: dict[str, dict[str, np.ndarray]] = {}
    for batch in _batches(_clip_stream(videos, needed), cfg.bench.batch_size):
        keys = [k for k, _ in batch]
        frames = np.stack([f for _, f in batch])  # [B,T,H,W,3] uint8
        for cond in conditions:
            order = np.stack([control_indices(cond, frames.shape[1], k, seed) for k in keys])  # [B,T]
            clip = frames[np.arange(len(keys))[:, None], order]
            emb = torch.as_tensor(scorer.encode_video(_normalise(clip, cfg.data))).float().cpu()
            video_emb[cond].update(zip(keys, F.normalize(emb, dim=-1).numpy()))
        picked = [i for i, k in enumerate(keys) if k in align_keys]
        if picked:
            aligned.update(align_embeddings(scorer, [keys[i] for i in picked], _normalise(frames[picked], cfg.data)))
    return video_emb, aligned


def _bench_texts(tables: BenchTables) -> list[str]:
    texts = [str(text) for task in ("semantic", "logic") if len(getattr(tables, task))
             for cands in getattr(tables, task)["candidates"] for text in cands]
    return texts + ([str(c) for c in tables.dynamics["caption"]] if len(tables.dynamics) else [])


def _score(tables: BenchTables, video_emb: dict, text_emb: dict) -> tuple[dict, list[dict], dict]:
    """(metrics by task, Dynamics pools, counts) for one condition's video embeddings."""
    metrics: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for task in ("semantic", "logic"):
        scores, answers, skipped, positions = _mcq(getattr(tables, task), video_emb, text_emb)
        metrics[task] = mcq_metrics(scores, answers)
        split = compositional_metrics(getattr(tables, task), scores, answers, positions)
        if split is not None:
            metrics.setdefault("compositional", {})[task] = split
        counts[task] = {"questions": int(len(getattr(tables, task))), "scored": int(len(answers)),
                        "skipped_missing_video": skipped, "candidates": np.isfinite(scores).sum(axis=1)}
    pools, skipped = _pools(tables.dynamics, video_emb, text_emb)
    metrics["dynamics"] = pooled_retrieval_metrics([p["sim"] for p in pools])
    counts["dynamics"] = {"clips": int(len(tables.dynamics)), "scored": int(sum(p["sim"].shape[0] for p in pools)),
                          "pools": len(pools), **{f"skipped_{k}": int(v) for k, v in skipped.items()}}
    return metrics, pools, counts


@torch.no_grad()
def evaluate(scorer, tables: BenchTables, videos, cfg, controls: Optional[Sequence[str]] = None,
             seed: Optional[int] = None, alignment: bool = True, pool_curve_repeats: int = 5) -> dict[str, Any]:
    """Score ``scorer`` on every task, normally and under each temporal control.

    videos: a mapping key -> uint8 [T,H,W,3] (:func:`load_bench_videos`) or a :class:`BenchVideos` stream; clips
    it lacks are skipped with their questions and counted (``failures`` of the stream or mapping give reasons).
    Returns ``semantic`` / ``logic`` (mcq_metrics), ``dynamics`` (pooled_retrieval_metrics), ``compositional``
    {task: seen / unseen verb-object pairs, :func:`compositional_metrics`} (also under each control), ``controls``
    {control: {task: metrics}}, ``temporal_gap`` {task: normal - shuffled headline metric}, ``dynamics_by_category``,
    ``pool_curve`` (Fig. 6), ``chance`` (a random scorer's expected metrics), ``alignment`` (Fig. 7-8, when the
    scorer has ``frame_embeddings``), ``counts`` and ``controls_seed``.
    """
    controls = tuple(cfg.bench.controls if controls is None else controls)
    for c in controls:
        control_indices(c, 2, "", 0)  # unknown names fail before any video is read
    seed = cfg.bench.seed if seed is None else seed
    needed = set(_needed_clips(tables))
    align_keys = alignment_clips(tables) if alignment and hasattr(scorer, "frame_embeddings") else {}
    video_emb, aligned = _embed_videos(scorer, videos, needed, (NORMAL, *controls), align_keys, cfg, seed)
    text_emb = embed_texts(scorer, _bench_texts(tables), cfg.bench.batch_size)

    results, pools, counts = _score(tables, video_emb[NORMAL], text_emb)
    results["controls"] = {c: _score(tables, video_emb[c], text_emb)[0] for c in controls}
    if "shuffled" in controls:
        results["temporal_gap"] = {task: results[task][m] - results["controls"]["shuffled"][task][m]
                                   for task, m in HEADLINE.items()}
    by_cat: dict[str, list] = defaultdict(list)
    for p in pools:
        by_cat[p["category"]].append(p["sim"])
    results["dynamics_by_category"] = {c: {**pooled_retrieval_metrics(s), "pools": len(s),
                                           "clips": int(sum(x.shape[0] for x in s))} for c, s in sorted(by_cat.items())}
    sims = [p["sim"] for p in pools]
    results["pool_curve"] = pool_size_curve(sims, seed, pool_curve_repeats)
    results["chance"] = _chance({t: counts[t].pop("candidates") for t in ("semantic", "logic")}
                                | {"dynamics": [s.shape[0] for s in sims]})
    if align_keys:
        phrase_emb = embed_texts(scorer, [p for ps in align_keys.values() for p in ps], cfg.bench.batch_size)
        results["alignment"] = alignment_costs(aligned, align_keys, phrase_emb)
    failures = dict(getattr(videos, "failures", {}) or {})
    loaded = set(video_emb[NORMAL])
    reasons = Counter(failures.get(k, "not_loaded") for k in needed - loaded)
    counts["videos"] = {"needed": len(needed), "loaded": len(loaded), "failed": dict(sorted(reasons.items()))}
    results["counts"] = counts
    results["controls_seed"] = seed
    return results
