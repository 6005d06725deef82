"""SynthKitchen: procedurally rendered instructional clips where only motion tells the verbs apart.

    from instraction.data.synthetic import make_synthkitchen
    shards = make_synthkitchen("data/synthkitchen/shards", SynthConfig())   # ~10 s on one core

The same few objects (egg, bowl, pan, ...) appear under every verb (drawn independently), and at least 12 verbs
differ only by motion (instraction/data/render.py lists what each does). A clip holds 2-4 actions with distinct
verbs; its ASR-like caption narrates them in order with filler (instraction/data/captions.py), and a
``chatter_fraction`` of clips are pure chatter with an idle object.

Frames vs the model's sampler: a clip is ``slots`` sample slots of ``frames_per_slot`` frames each and every action
spans whole slots (``min_action_slots``..``max_action_slots``). The uniform sampler of
``instraction.data.video.decode_frames`` with ``num_frames == slots`` takes one frame per slot (times (i + 0.5) *
duration / slots), so an action of s slots is seen in exactly s >= 2 sampled frames, and render.py times each
motion so that the change between two consecutive sampled frames shows the verb (default: 8 slots x 2 frames at
8 fps = 2 s clips of 16 frames).

Layout (video2dataset, the team contract): ``{shard:05d}.tar`` written with webdataset's ShardWriter holding
KEY.mp4 (H.264), KEY.txt (caption), KEY.json ({key, video_id, caption, start, end, segments, synthkitchen, ...}),
plus ``{shard:05d}.parquet`` and ``{shard:05d}_stats.json``. A shard's three files appear by rename only once all
are written (stats last), so a killed run never leaves a half shard with a complete name; a rerun keeps the
complete shards whose stats carry the same config hash (config + generator source). ``_synthkitchen.json``
marks a finished dataset.
A whole video (``whole_video_fraction`` of samples) holds 2..max_segments clips with idle gaps; each segment
carries its own ``synthkitchen`` truth and its window [start, end) in the longer mp4.

Compositional split: ``unseen_pairs`` (a fixed ~20% of the verb-object pairs; every verb and object keeps seen
pairs) are drawn only in videos that ``instraction.data.split.is_holdout`` puts in the bench split, so training
never shows them and the bench scores clips with an unseen pair apart (instraction/bench/build.py finds the pairs
from the training annotations, as it would on real data). The marker lists the pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np

from instraction.data import captions, render
from instraction.data.config import SynthConfig
from instraction.data.split import DEFAULT_HOLDOUT_FRACTION, is_holdout
from instraction.storage import is_remote

GENERATOR_VERSION = "synthkitchen-2"  # with the source fingerprint, the cache key of a generated dataset
MARKER = "_synthkitchen.json"
_OURS = re.compile(r"^\d{5}(\.tar|\.parquet|_stats\.json)(\.partial)?$")


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Hash of the generator's own source: editing the renderer or the captions invalidates cached datasets."""
    digest = hashlib.sha256()
    for module in (render, captions):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def _split_filled(cfg: SynthConfig) -> SynthConfig:
    """``cfg`` with an unset split as :func:`in_bench_split` reads it (the same dataset either way)."""
    return dataclasses.replace(
        cfg, holdout_fraction=DEFAULT_HOLDOUT_FRACTION if cfg.holdout_fraction is None else cfg.holdout_fraction,
        holdout_seed=cfg.holdout_seed or 0)


def config_hash(cfg: SynthConfig) -> str:
    """Cache key of a dataset: the config, GENERATOR_VERSION and the generator's source fingerprint."""
    blob = json.dumps({"version": GENERATOR_VERSION, "code": _code_fingerprint(),
                       **dataclasses.asdict(_split_filled(cfg))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@lru_cache(maxsize=64)
def slot_layouts(slots: int, k: int, lo: int, hi: int) -> tuple[tuple[int, ...], ...]:
    """Every way to split ``slots`` into ``k`` ordered parts of ``lo..hi`` slots (the segment lengths)."""
    if k == 0:
        return ((),) if slots == 0 else ()
    return tuple((first, *rest) for first in range(lo, hi + 1) for rest in slot_layouts(slots - first, k - 1, lo, hi))


def _rng(cfg: SynthConfig, stream: int, index: int) -> np.random.Generator:
    # independent streams per purpose and index: any sample can be rebuilt alone, in any order
    return np.random.default_rng([cfg.seed, stream, index])


@lru_cache(maxsize=8)
def _unseen_pairs(verbs: tuple[str, ...], objects: tuple[str, ...], share: float, max_actions: int, seed: int
                  ) -> frozenset[tuple[str, str]]:
    n = round(share * len(verbs) * len(objects))
    # spread evenly: each verb keeps >= 1 seen object, each object >= max_actions seen verbs (a clip's verbs differ)
    per_verb = min(math.ceil(n / len(verbs)), len(objects) - 1)
    per_object = min(math.ceil(n / len(objects)), len(verbs) - max_actions)
    chosen: set[tuple[str, str]] = set()
    by_verb: Counter = Counter()
    by_object: Counter = Counter()
    for i in np.random.default_rng([seed, 4]).permutation(len(verbs) * len(objects)):
        verb, obj = verbs[i // len(objects)], objects[i % len(objects)]
        if len(chosen) < n and by_verb[verb] < per_verb and by_object[obj] < per_object:
            chosen.add((verb, obj))
            by_verb[verb] += 1
            by_object[obj] += 1
    return frozenset(chosen)


def unseen_pairs(cfg: SynthConfig) -> frozenset[tuple[str, str]]:
    """The (verb, object) pairs drawn only in videos of the bench split: ``cfg.unseen_pairs`` of all pairs, a fixed
    function of ``cfg.seed``, spread so that every verb and every object keeps pairs seen in training."""
    if cfg.unseen_pairs <= 0:
        return frozenset()
    return _unseen_pairs(tuple(cfg.verbs), tuple(cfg.objects), cfg.unseen_pairs, cfg.max_actions, cfg.seed)


def in_bench_split(cfg: SynthConfig, video_id: str) -> bool:
    """Whether ``video_id`` falls in the bench split that ``cfg``'s unseen pairs are kept to."""
    cfg = _split_filled(cfg)
    return is_holdout(video_id, cfg.holdout_fraction, cfg.holdout_seed)


def _clip(cfg: SynthConfig, rng: np.random.Generator, banned: frozenset = frozenset()) -> dict:
    """One clip: frames' poses, object, caption and truth (spans in frames from the clip start). Its verbs never
    form a ``banned`` pair with its object."""
    obj = cfg.objects[int(rng.integers(len(cfg.objects)))]
    r = cfg.frames_per_slot
    if rng.random() < cfg.chatter_fraction:
        pose = render.action_poses(None, cfg.slots, r, cfg.size, rng, cfg.nuisance)
        return {"pose": pose, "object": obj, "verbs": [], "spans": [], "instructional": False,
                "caption": captions.chatter_caption(rng)}
    k = int(rng.integers(cfg.min_actions, cfg.max_actions + 1))
    layouts = slot_layouts(cfg.slots, k, cfg.min_action_slots, cfg.max_action_slots)
    layout = layouts[int(rng.integers(len(layouts)))]
    allowed = [v for v in cfg.verbs if (v, obj) not in banned]
    verbs = [allowed[i] for i in rng.choice(len(allowed), size=k, replace=False)]
    poses = [render.action_poses(v, s, r, cfg.size, rng, cfg.nuisance) for v, s in zip(verbs, layout)]
    ends = np.cumsum(layout) * r
    spans = [(int(e - s * r), int(e)) for s, e in zip(layout, ends)]
    caption = captions.instructional_caption(verbs, obj, rng, cfg.max_caption_words)
    return {"pose": render.concat_poses(poses), "object": obj, "verbs": verbs, "spans": spans,
            "instructional": True, "caption": caption}


def _truth(clip: dict, offset: int, fps: int) -> dict:
    return {"actions": [f"{v} {clip['object']}" for v in clip["verbs"]], "verbs": list(clip["verbs"]),
            "object": clip["object"], "instructional": clip["instructional"],
            "spans": [[_sec(a + offset, fps), _sec(b + offset, fps)] for a, b in clip["spans"]]}


def _sec(frames: int, fps: int) -> float:
    return round(frames / fps, 6)


def build_sample(cfg: SynthConfig, shard: int, index: int) -> tuple[dict, dict]:
    """(tar sample {"__key__", "mp4", "json", "txt"}, parquet row) of sample ``index`` of ``shard``.

    Deterministic in (cfg, shard, index). Timings of the render/encode split go into the row (``_render_s``,
    ``_encode_s``) and are removed before the row is written.
    """
    n = shard * cfg.clips_per_shard + index
    key = f"{shard:05d}{index:04d}"
    rng = _rng(cfg, 1, n)
    whole = rng.random() < cfg.whole_video_fraction
    video_rng = _rng(cfg, 3, n) if whole else _rng(cfg, 2, n // cfg.clips_per_video)
    video_id = f"sk{cfg.seed}-{'w' if whole else 'v'}{n if whole else n // cfg.clips_per_video:06d}"
    bg = render.background(cfg.size, video_rng)
    banned = frozenset() if in_bench_split(cfg, video_id) else unseen_pairs(cfg)
    tic = time.perf_counter()
    if whole:
        frames, meta_segments, truth = _whole_video(cfg, rng, bg, banned)
    else:
        clip = _clip(cfg, rng, banned)
        frames = render.render(clip["object"], clip["pose"], bg)
        truth = _truth(clip, 0, cfg.fps)
        meta_segments = [{"start": 0.0, "end": _sec(len(frames), cfg.fps), "text": clip["caption"]}]
    toc = time.perf_counter()
    mp4 = render.encode_h264(frames, cfg.fps, cfg.crf)
    encode_s = time.perf_counter() - toc
    duration = _sec(len(frames), cfg.fps)
    caption = " ".join(s["text"] for s in meta_segments)
    meta = {
        "key": key, "video_id": video_id, "url": f"synthkitchen://{video_id}", "status": "success",
        "caption": caption, "start": 0.0 if whole else meta_segments[0]["start"],
        "end": duration if whole else meta_segments[0]["end"], "duration": duration, "fps": cfg.fps,
        "width": cfg.size, "height": cfg.size, "num_frames": len(frames), "segments": meta_segments,
        "synthkitchen": truth,
    }
    sample = {"__key__": key, "mp4": mp4, "txt": caption.encode("utf-8"),
              "json": json.dumps(meta, separators=(",", ":")).encode("utf-8")}
    row = {"key": key, "status": "success", "error_message": None, "url": meta["url"], "video_id": video_id,
           "caption": caption, "start": meta["start"], "end": meta["end"], "duration": duration,
           "width": cfg.size, "height": cfg.size, "fps": cfg.fps, "num_frames": len(frames),
           "num_segments": len(meta_segments), "whole_video": whole,
           "instructional": [bool(s.get("synthkitchen", truth)["instructional"]) for s in meta_segments],
           "num_actions": [len(s.get("synthkitchen", truth)["actions"]) for s in meta_segments],
           "actions": truth["actions"], "object": truth["object"], "mp4_bytes": len(mp4),
           "_render_s": toc - tic, "_encode_s": encode_s}
    return sample, row


def _whole_video(cfg: SynthConfig, rng: np.random.Generator, bg: np.ndarray, banned: frozenset
                 ) -> tuple[np.ndarray, list, dict]:
    """A longer video: idle gaps of 0..2 slots around 2..max_segments clips, one ASR segment per clip."""
    r, segments, frames_parts, cursor = cfg.frames_per_slot, [], [], 0

    def idle_gap() -> int:  # 0..2 slots of an object resting between the narrated steps
        gap = int(rng.integers(0, 2 * r + 1))
        if gap:
            obj = cfg.objects[int(rng.integers(len(cfg.objects)))]
            frames_parts.append(render.render(obj, render.action_poses(None, 1, gap, cfg.size, rng, 0.0), bg))
        return gap

    for _ in range(int(rng.integers(2, cfg.max_segments + 1))):
        cursor += idle_gap()
        clip = _clip(cfg, rng, banned)
        frames_parts.append(render.render(clip["object"], clip["pose"], bg))
        n = len(frames_parts[-1])
        segments.append({"start": _sec(cursor, cfg.fps), "end": _sec(cursor + n, cfg.fps), "text": clip["caption"],
                         "synthkitchen": _truth(clip, cursor, cfg.fps)})
        cursor += n
    idle_gap()
    truths = [s["synthkitchen"] for s in segments]
    instructional = [t for t in truths if t["instructional"]]
    truth = {"actions": [a for t in truths for a in t["actions"]], "verbs": [v for t in truths for v in t["verbs"]],
             "object": (instructional or truths)[0]["object"], "instructional": bool(instructional),
             "spans": [s for t in truths for s in t["spans"]], "whole_video": True}
    return np.concatenate(frames_parts), segments, truth


def write_shard(out_dir: str | os.PathLike, shard: int, cfg: SynthConfig) -> dict:
    """Render shard ``shard`` into ``out_dir`` atomically; returns its stats dict (also written beside it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    out = Path(out_dir)
    final = {ext: out / f"{shard:05d}{ext}" for ext in (".tar", ".parquet", "_stats.json")}
    tmp = {ext: path.with_name(path.name + ".partial") for ext, path in final.items()}
    start_time = time.time()
    pattern = str(out).replace("%", "%%") + "/%05d.tar.partial"
    writer = wds.ShardWriter(pattern, maxcount=cfg.clips_per_shard, start_shard=shard, verbose=0,
                             encoder=False, mtime=0, user="synthkitchen", group="synthkitchen")
    rows = []
    try:
        for index in range(cfg.clips_per_shard):
            sample, row = build_sample(cfg, shard, index)
            writer.write(sample)
            rows.append(row)
        writer.close()
        timings = {k: sum(row.pop(k) for row in rows) for k in ("_render_s", "_encode_s")}
        pq.write_table(pa.Table.from_pylist(rows), tmp[".parquet"])
        stats = _shard_stats(cfg, rows, start_time, timings, tmp[".tar"].stat().st_size)
        tmp["_stats.json"].write_text(json.dumps(stats, indent=1))
        for ext in (".tar", ".parquet", "_stats.json"):  # stats last: its presence means the shard is complete
            os.replace(tmp[ext], final[ext])
    except BaseException:
        try:
            writer.close()
        except Exception:
            pass
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    return stats


def _shard_stats(cfg: SynthConfig, rows: list[dict], start_time: float, timings: dict, nbytes: int) -> dict:
    clips = [(inst, k) for row in rows for inst, k in zip(row["instructional"], row["num_actions"])]
    verbs = Counter(a.split()[0] for row in rows for a in row["actions"])
    objects = Counter(a.split()[-1] for row in rows for a in row["actions"])
    return {
        # the fields video2dataset writes
        "count": len(rows), "successes": len(rows), "failed_to_download": 0, "failed_to_subsample": 0,
        "bytes_downloaded": 0, "start_time": start_time, "end_time": time.time(),
        "duration": time.time() - start_time, "status_dict": {"success": len(rows)},
        # SynthKitchen's own
        "generator": GENERATOR_VERSION, "config_hash": config_hash(cfg), "clips": len(clips),
        "instructional_clips": sum(1 for inst, _ in clips if inst),
        "chatter_clips": sum(1 for inst, _ in clips if not inst),
        "whole_videos": sum(1 for row in rows if row["whole_video"]),
        "actions_per_clip": {str(k): n for k, n in sorted(Counter(k for inst, k in clips if inst).items())},
        "verbs": dict(sorted(verbs.items())), "objects": dict(sorted(objects.items())),
        "tar_bytes": nbytes, "render_s": round(timings["_render_s"], 4), "encode_s": round(timings["_encode_s"], 4),
    }


def _shard_complete(out: Path, shard: int, digest: str) -> bool:
    stats = out / f"{shard:05d}_stats.json"
    if not ((out / f"{shard:05d}.tar").is_file() and (out / f"{shard:05d}.parquet").is_file() and stats.is_file()):
        return False
    try:
        return json.loads(stats.read_text()).get("config_hash") == digest
    except (OSError, ValueError):
        return False


def read_marker(out_dir: str | os.PathLike) -> Optional[dict]:
    """The finished-dataset marker (config, hash, totals) or None."""
    try:
        return json.loads((Path(out_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def make_synthkitchen(out_dir: str | os.PathLike, cfg: SynthConfig, force: bool = False,
                      log: Any = None, use_ray: bool = False) -> list[str]:
    """Write the SynthKitchen dataset of ``cfg`` into local directory ``out_dir``; returns the sorted tar paths.

    A finished dataset with the same config hash is reused as is (nothing rendered); complete shards of an
    interrupted run with the same hash are kept. ``{shard:05d}`` shards SynthKitchen did not write are refused
    unless ``force`` (which re-renders everything); other tars are always refused (they would join the dataset).
    ``log``: optional callable(str) for progress lines. ``use_ray``: render the missing shards as Ray tasks on this
    node (Ray must be initialised; one task per shard, at most one per core in flight; in this process when the node
    gives Ray no CPU), else one after another in this process. The bytes are the same either way (a shard depends
    on (cfg, shard) only).
    """
    if is_remote(out_dir):
        raise ValueError(f"SynthKitchen writes to a local directory, not {out_dir!r} (copy the shards afterwards)")
    cfg.validate("synthetic")
    out = Path(str(out_dir).removeprefix("file://"))
    out.mkdir(parents=True, exist_ok=True)
    digest = config_hash(cfg)
    paths = [str(out / f"{s:05d}.tar") for s in range(cfg.num_shards)]
    marker = read_marker(out)
    ours = sorted(p for p in os.listdir(out) if _OURS.match(p))
    if not force and marker and marker.get("config_hash") == digest and all(
            _shard_complete(out, s, digest) for s in range(cfg.num_shards)):
        return paths
    foreign = [p for p in os.listdir(out) if p.endswith(".tar") and p not in ours]
    if foreign:
        raise FileExistsError(f"{out} holds other tars ({foreign[:3]}...): they would join the dataset; "
                              "use another directory")
    if ours and marker is None and not _any_ours(out, ours) and not force:
        raise FileExistsError(f"{out} holds shards SynthKitchen did not write ({ours[:3]}...); "
                              "use another directory or force=True")
    (out / MARKER).unlink(missing_ok=True)  # from here on the directory is not a finished dataset
    for name in ours:  # stale shards of another config, leftovers of a killed run, or everything when forced
        match = int(name[:5])
        if force or name.endswith(".partial") or match >= cfg.num_shards or not _shard_complete(out, match, digest):
            (out / name).unlink(missing_ok=True)
    totals: Counter = Counter()
    tic = time.perf_counter()
    missing = [shard for shard in range(cfg.num_shards) if not _shard_complete(out, shard, digest)]
    render_shards = _render_with_ray if use_ray and len(missing) > 1 else _render_here
    rendered = {}
    for shard, stats in render_shards(out, missing, cfg):
        rendered[shard] = stats
        if log:
            log(f"synthkitchen: wrote {paths[shard]} ({stats['clips']} clips, {stats['duration']:.1f} s)")
    for shard in range(cfg.num_shards):  # shards kept from an earlier run: their stats file
        stats = rendered.get(shard) or json.loads((out / f"{shard:05d}_stats.json").read_text())
        for field in ("count", "clips", "instructional_clips", "chatter_clips", "whole_videos", "tar_bytes",
                      "render_s", "encode_s"):
            totals[field] += stats[field]
    record = {"generator": GENERATOR_VERSION, "config_hash": digest, "config": dataclasses.asdict(_split_filled(cfg)),
              "unseen_pairs": sorted(f"{v} {o}" for v, o in unseen_pairs(cfg)),
              "shards": [os.path.basename(p) for p in paths],
              "totals": {k: round(v, 3) if isinstance(v, float) else v for k, v in totals.items()},
              "wall_s": round(time.perf_counter() - tic, 3)}
    tmp = out / (MARKER + ".partial")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / MARKER)
    return paths


def _render_here(out: Path, shards: list[int], cfg: SynthConfig):
    """(shard, stats) for each shard, rendered one after another in this process."""
    for shard in shards:
        yield shard, write_shard(out, shard, cfg)


def _render_with_ray(out: Path, shards: list[int], cfg: SynthConfig):
    """(shard, stats) in completion order, each shard rendered by a Ray task pinned to this node (the output is a
    local directory), at most min(this node's Ray CPUs, os.cpu_count()) in flight. A node that gives Ray no CPU (a
    cluster head started with --num-cpus 0) renders in this process instead: a pinned task would wait forever. A
    failed shard raises its error here once the tasks already running have finished (their shards are complete and
    kept for the next run; nothing else is started)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        raise RuntimeError("make_synthkitchen(use_ray=True) needs ray.init() first")
    node_id = ray.get_runtime_context().get_node_id()
    node_cpus = next((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("NodeID") == node_id), 0)
    limit = int(min(node_cpus, os.cpu_count() or 1))
    if limit < 1:
        yield from _render_here(out, shards, cfg)
        return
    # num_cpus=0: the in-flight limit above is the CPU budget, so the tasks never wait behind Ray reservations that
    # other work (an actor left by an earlier job in the same Ray instance) holds on this node
    task = ray.remote(write_shard).options(
        num_cpus=0, max_retries=0, name="synthkitchen.write_shard",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    todo, running, failure = list(shards), {}, None
    while todo or running:
        while todo and len(running) < limit and failure is None:
            shard = todo.pop(0)
            running[task.remote(str(out), shard, cfg)] = shard
        if not running:
            break
        done, _ = ray.wait(list(running), num_returns=1)
        shard = running.pop(done[0])
        try:
            stats = ray.get(done[0])
        except Exception as err:  # noqa: BLE001 - re-raised below, after the running tasks
            failure = failure or err
            continue
        yield shard, stats
    if failure is not None:
        raise failure


def written_by_synthkitchen(out_dir: str | Path) -> bool:
    """True when ``out_dir`` is a SynthKitchen dataset, finished (its marker) or interrupted (a shard stats file of
    ours, or a ``.partial`` file): :func:`make_synthkitchen` may then complete or re-render it. False for a
    directory of someone else's shards, which must be used as they are."""
    out = Path(out_dir)
    if read_marker(out) is not None:
        return True
    try:
        names = sorted(p for p in os.listdir(out) if _OURS.match(p))
    except OSError:
        return False
    return _any_ours(out, names)


def _any_ours(out: Path, names: list[str]) -> bool:
    """True when some shard stats file says SynthKitchen wrote it (an interrupted run of ours, any config)."""
    for name in names:
        if name.endswith("_stats.json"):
            try:
                if str(json.loads((out / name).read_text()).get("generator", "")).startswith("synthkitchen"):
                    return True
            except (OSError, ValueError):
                continue
    return any(name.endswith(".partial") for name in names)
