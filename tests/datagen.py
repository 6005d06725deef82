"""Builders of small real shards for the data tests and the data benchmark: PyAV-encoded H.264 clips in
webdataset tars (the video2dataset layout of the team contract), plus every kind of bad input.

Frames are flat grey levels that encode time (``level = 40 + 20 * second``), so a test can check which part of
a video a sampled frame came from.
"""

from __future__ import annotations

import io
import json
import os
from fractions import Fraction
from typing import Optional

import av
import numpy as np
import webdataset as wds


def ramp_frames(seconds: float, fps: int, size: int = 32, height: Optional[int] = None) -> np.ndarray:
    """uint8 [N, height, size, 3]; frame at time t is grey ``level(t) = 40 + 20 * t`` (clipped to 255)."""
    n = max(1, int(round(seconds * fps)))
    levels = np.clip(40 + 20 * (np.arange(n) / fps), 0, 255).astype(np.uint8)
    frames = np.empty((n, height or size, size, 3), np.uint8)
    frames[:] = levels[:, None, None, None]
    return frames


def level_to_seconds(level: float) -> float:
    return (level - 40) / 20


def encode_mp4(frames: np.ndarray, fps: int = 8, gop: int = 8, crf: int = 18, container_format: str = "mp4") -> bytes:
    """uint8 [N,H,W,3] (H, W even) -> H.264 bytes (mp4, or e.g. "matroska"), keyframe every ``gop`` frames."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "crf": str(crf),
                          "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


_MP4_CACHE: dict = {}


def ramp_mp4(seconds: float = 2.0, fps: int = 8, size: int = 32) -> bytes:
    """A cached ramp clip (encoding is the slow part of building test shards)."""
    key = (seconds, fps, size)
    if key not in _MP4_CACHE:
        _MP4_CACHE[key] = encode_mp4(ramp_frames(seconds, fps, size), fps)
    return _MP4_CACHE[key]


def truth(actions: list[str], instructional: bool = True, spans: Optional[list] = None) -> dict:
    return {"actions": actions, "verbs": [a.split()[0] for a in actions], "object": actions[0].split()[-1],
            "instructional": instructional,
            "spans": spans if spans is not None else [[i * 0.5, (i + 1) * 0.5] for i in range(len(actions))]}


def clip_sample(key: str, video_id: str, caption: str, actions: list[str], mp4: bytes,
                instructional: bool = True, start: float = 0.0, end: float = 2.0) -> dict:
    """A pre-cut clip sample: exactly one segment, window = the whole clip."""
    meta = {"key": key, "video_id": video_id, "caption": caption, "start": start, "end": end,
            "segments": [{"start": start, "end": end, "text": caption}],
            "synthkitchen": truth(actions, instructional)}
    return {"__key__": key, "mp4": mp4, "json": json.dumps(meta).encode(), "txt": caption.encode()}


def whole_video_sample(key: str, video_id: str, segments: list[dict], mp4: bytes) -> dict:
    """A whole video with several ASR segments ({"start","end","text"[, "synthkitchen"]}), cut at read time."""
    meta = {"key": key, "video_id": video_id, "caption": " ".join(s["text"] for s in segments),
            "start": segments[0]["start"], "end": segments[-1]["end"], "segments": segments}
    return {"__key__": key, "mp4": mp4, "json": json.dumps(meta).encode(), "txt": meta["caption"].encode()}


def write_tar(path: str, samples: list[dict]) -> str:
    """Write ``samples`` (``{"__key__", ext: bytes, ...}``) to a webdataset tar at ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=0)
        for sample in samples:
            writer.write(sample)
        writer.close()
    return path


CAPTIONS = [
    ("crack the egg into the bowl then whisk the egg", ["crack egg", "whisk egg"]),
    ("chop the onion and then stir the sauce", ["chop onion", "stir sauce"]),
    ("pour the milk then flip the pancake", ["pour milk", "flip pancake"]),
    ("slice the tomato then season the salad", ["slice tomato", "season salad"]),
]


def good_samples(shard: int, n: int, mp4: Optional[bytes] = None, chatter_every: int = 0) -> list[dict]:
    """``n`` valid pre-cut clips with keys ``f"{shard:05d}{i:04d}"``, each its own source video."""
    mp4 = mp4 or ramp_mp4()
    out = []
    for i in range(n):
        caption, actions = CAPTIONS[(shard + i) % len(CAPTIONS)]
        chatter = bool(chatter_every) and i % chatter_every == chatter_every - 1
        if chatter:
            caption, actions = "hey guys welcome back to my channel", []
        key = f"{shard:05d}{i:04d}"
        out.append(clip_sample(key, f"vid{shard}_{i}", caption, actions or ["none"], mp4,
                               instructional=not chatter))
    return out


def build_good_shards(root: str, num_shards: int = 2, per_shard: int = 4, whole_videos: int = 1) -> dict:
    """Good shards under ``root``; shard 0 also holds ``whole_videos`` 3-segment whole videos (6 s ramp).

    Returns {"shards": paths, "clip_keys": every clip key expected, "whole": {key: segments}}.
    """
    long_mp4 = ramp_mp4(6.0)
    keys, whole, paths = [], {}, []
    for s in range(num_shards):
        samples = good_samples(s, per_shard)
        keys += [x["__key__"] for x in samples]
        if s == 0:
            for w in range(whole_videos):
                key = f"{s:05d}w{w:03d}"
                segments = [{"start": 0.0, "end": 2.0, "text": "crack the egg into the bowl",
                             "synthkitchen": truth(["crack egg"])},
                            {"start": 2.0, "end": 4.0, "text": "whisk the egg", "synthkitchen": truth(["whisk egg"])},
                            {"start": 4.0, "end": 6.0, "text": "pour the batter into the pan",
                             "synthkitchen": truth(["pour batter"])}]
                samples.append(whole_video_sample(key, f"whole{w}", segments, long_mp4))
                whole[key] = segments
                keys += [f"{key}_{i:03d}" for i in range(len(segments))]
        paths.append(write_tar(os.path.join(root, f"{s:05d}.tar"), samples))
    return {"shards": paths, "clip_keys": sorted(keys), "whole": whole}


def build_bad_shards(root: str, first_shard: int = 10) -> dict:
    """Shards with every kind of bad input planted beside good clips.

    Returns {"shards": paths, "good_keys": keys that must come through, "errors": {reason: sorted keys},
    "undecodable": keys whose bytes are not a video (only decoding finds them)}.
    """
    mp4 = ramp_mp4()
    a, b, c, d = (first_shard + i for i in range(4))
    good = good_samples(a, 3)
    bad_mixed = [
        {"__key__": "nomp4", "json": json.dumps({"video_id": "x", "caption": "stir"}).encode(), "txt": b"stir"},
        {**clip_sample("zerolen", "v-z", "stir the sauce", ["stir sauce"], b"")},
        {**clip_sample("garbage", "v-g", "stir the sauce", ["stir sauce"], os.urandom(2048))},
        {**clip_sample("emptycap", "v-e", "", ["stir sauce"], mp4), "txt": b""},
        {**clip_sample("latin1", "v-l", "stir the sauce", ["stir sauce"], mp4),
         "txt": "crème brûlée".encode("latin-1")},
        {"__key__": "badjson", "mp4": mp4, "json": b"{not json", "txt": b"stir"},
        {"__key__": "nojson", "mp4": mp4, "txt": b"stir the sauce"},
    ]
    p0 = write_tar(os.path.join(root, f"{a:05d}.tar"), good + bad_mixed)

    # Truncated mid-member: the first two samples survive, then one corrupt_tar row.
    trunc_samples = good_samples(b, 4)
    full = os.path.join(root, f"{b:05d}.full")
    write_tar(full, trunc_samples)
    with open(full, "rb") as f:
        raw = f.read()
    os.remove(full)
    cut = _offset_of_member(raw, trunc_samples[2]["__key__"] + ".json") + 700
    p1 = os.path.join(root, f"{b:05d}.tar")
    with open(p1, "wb") as f:
        f.write(raw[:cut])

    p2 = os.path.join(root, f"{c:05d}.tar")
    with open(p2, "wb") as f:
        f.write(os.urandom(4096))  # garbage: not a tar at all

    # A whole video with one empty segment: only that clip drops.
    segs = [{"start": 0.0, "end": 1.0, "text": "crack the egg", "synthkitchen": truth(["crack egg"])},
            {"start": 1.0, "end": 2.0, "text": "  "}]
    p3 = write_tar(os.path.join(root, f"{d:05d}.tar"), [whole_video_sample("wv", "wv-src", segs, mp4)])

    errors = {
        "missing_mp4": ["nomp4"], "empty_video": ["zerolen"], "bad_caption": ["emptycap", "latin1", "wv_001"],
        "bad_json": ["badjson"], "missing_json": ["nojson"],
        "corrupt_tar": [f"{b:05d}#corrupt_tar", f"{c:05d}#corrupt_tar"],
    }
    good_keys = [s["__key__"] for s in good] + [s["__key__"] for s in trunc_samples[:2]] + ["garbage", "wv_000"]
    return {"shards": [p0, p1, p2, p3], "good_keys": sorted(good_keys),
            "errors": {k: sorted(v) for k, v in errors.items()}, "undecodable": ["garbage"]}


def _offset_of_member(raw: bytes, name: str) -> int:
    pos = raw.find(name.encode() + b"\0")
    assert pos >= 0 and pos % 512 == 0, name
    return pos


class MotoS3:
    """A moto S3 server on 127.0.0.1 (free port) holding ``uploads`` ({local path: "bucket/key"}), objects
    public-read so Ray workers (whose environment predates the test's credentials) can read them anonymously.

        with MotoS3({"/tmp/x/00000.tar": "bucket/good/00000.tar"}, secret="...") as s3cfg: ...
    """

    def __init__(self, uploads: dict[str, str], access_key: str = "AKIATESTKEY", secret: str = "testing-secret"):
        self.uploads, self.creds = uploads, {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret,
                                             "AWS_DEFAULT_REGION": "us-east-1"}

    def __enter__(self):
        from moto.server import ThreadedMotoServer

        from instraction import storage
        from instraction.data.config import S3Config

        self.saved = {k: os.environ.get(k) for k in self.creds}
        os.environ.update(self.creds)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        cfg = S3Config(endpoint_url=f"http://{host}:{port}")
        fs, _ = storage.open_filesystem("s3://x", cfg)
        for bucket in sorted({dest.split("/", 1)[0] for dest in self.uploads.values()}):
            fs.mkdir(bucket, acl="public-read")
        for src, dest in self.uploads.items():
            fs.put(src, dest)
            fs.chmod(dest, "public-read")
        return cfg

    def __exit__(self, *exc):
        import urllib.request

        host, port = self.server.get_host_and_port()
        # moto's backends are process-global: wipe them so the next server starts empty
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
        self.server.stop()
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
