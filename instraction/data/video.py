"""Decode a clip from mp4 bytes and sample frames uniformly over a time window (stable surface: docs/ARCHITECTURE.md).

    frames = decode_frames(mp4_bytes, num_frames=8, size=32, start=4.0, end=6.0)   # uint8 [8, 32, 32, 3] RGB

Sampling rule (used by every decoder here, so they agree frame for frame): with window [start, end) and T frames,
frame i is taken at time

    t_i = start + (i + 0.5) * (end - start) / T,      i = 0 .. T-1

and the decoded frame chosen is the one whose presentation interval [pts_k, pts_{k+1}) contains t_i (times in
seconds on the stream's timeline; the last frame's interval ends at pts + its duration). A t_i before the first
frame takes the first frame. Over a clip of T * r frames at constant rate this is frame floor((i + 0.5) * r): one
frame from each block of r (SynthKitchen relies on it, see synthetic.py). With start/end None the window is the
whole video, [first frame time, declared stream end).

Cost (the planned path, ``decode_frames``): a window that starts after 0 is reached by seeking to the keyframe
before it; the packets from there to the window's end are read first (demuxing is ~1000x cheaper than decoding),
their timestamps fix which frames are sampled, and then only what those frames need is decoded: every reference
frame up to the last sampled one, and of the non-reference frames (most B-frames) only the sampled ones; the rest
are skipped inside FFmpeg (``skip_frame``), which changes no pixel of the frames that are decoded. Only the chosen
frames are converted, resized (shorter side to ``size``, area interpolation) and centre-cropped, by libswscale on
one thread. Memory: the window's compressed packets (at most the input's size) and the T output frames. Anything
the plan cannot cover (packets without timestamps, no declared end, an overshooting seek, a sampled frame the
decoder does not return, a window past the end) falls back to ``decode_frames_reference``, the sequential decoder
that decides such cases (and raises on bad windows). On 854x480 H.264 with B-frames and a 250-frame GOP the
planned path is ~1.4x as fast per core as the reference, with the same pixels (``jobs/benchmark.py data``).
"""

from __future__ import annotations

import io
import math
from typing import Optional

import numpy as np

_TOLERANCE = 1e-6  # seconds: pts arithmetic in float


def sample_times(start: float, end: float, num_frames: int) -> np.ndarray:
    """float64 [T]: t_i = start + (i + 0.5) * (end - start) / T (the uniform sampling rule)."""
    return start + (np.arange(num_frames) + 0.5) * (end - start) / num_frames


def pick_frames(frame_starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """int [T]: index of the frame whose interval [start_k, start_{k+1}) contains each time (first frame for
    times before it). ``frame_starts`` ascending."""
    idx = np.searchsorted(np.asarray(frame_starts) - _TOLERANCE, times, side="right") - 1
    return np.clip(idx, 0, len(frame_starts) - 1)


def _check_args(num_frames: int, size: int, start: Optional[float], end: Optional[float]) -> None:
    if int(num_frames) < 1 or int(size) < 1:
        raise ValueError(f"num_frames and size must be >= 1, got {num_frames}, {size}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of seconds, got {value}")
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0 seconds, got {start}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"empty window [{start}, {end})")


def _resized_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side == size and the aspect ratio kept (the longer side rounded, >= size)."""
    if width <= height:
        return size, max(size, int(round(height * size / width)))
    return max(size, int(round(width * size / height))), size


def _center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return rgb[top: top + size, left: left + size]


def _to_rgb(frame, size: int, reformatter, threads: Optional[int] = None) -> np.ndarray:
    """av.VideoFrame -> uint8 [size, size, 3]: resize the shorter side to size, centre crop (libswscale).

    One ``VideoReformatter`` per video keeps its scaler context across frames (~7x faster than frame.reformat).
    ``threads`` None: the reference path's rule (all cores for frames >= 640x360); the planned path passes 1: a
    thread pool per clip costs more CPU than it saves on 8 frames (854x480: 3.8 vs 2.7 ms per clip on 2 cores).
    """
    w, h = _resized_dims(frame.width, frame.height, size)
    if threads is None:
        threads = 0 if frame.width * frame.height >= 640 * 360 else 1
    rgb = reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA",
                               threads=threads).to_ndarray()
    return np.ascontiguousarray(_center_crop(rgb, size))


def decode_frames(data: bytes, num_frames: int, size: int, start: Optional[float] = None,
                  end: Optional[float] = None) -> np.ndarray:
    """uint8 [T, size, size, 3] RGB: ``num_frames`` frames sampled uniformly over [start, end) seconds of the video
    in ``data`` (the whole video when start/end are None), resized (shorter side) and centre-cropped.

    Raises ValueError on bytes that cannot be decoded (empty, garbage, truncated, no video stream) or a window
    outside the video.
    """
    return decode_frames_variant(data, num_frames, size, start, end)


def decode_frames_reference(data: bytes, num_frames: int, size: int, start: Optional[float] = None,
                            end: Optional[float] = None) -> np.ndarray:
    """Same contract as :func:`decode_frames`, decoded sequentially: every frame from the keyframe before the
    window to the one after the last sampled time. The planned path's fallback, its oracle in the tests and the
    data benchmark's baseline."""
    return decode_frames_variant(data, num_frames, size, start, end, planned=False)


def decode_frames_variant(data: bytes, num_frames: int, size: int, start: Optional[float] = None,
                          end: Optional[float] = None, *, planned: bool = True,
                          frame_threads: Optional[bool] = None) -> np.ndarray:
    """:func:`decode_frames` (``planned``) or :func:`decode_frames_reference`, for the benchmark: ``frame_threads``
    None uses FFmpeg's frame threads for frames >= 640x360 (the default: lower latency, the same CPU time per
    clip), False one decoding thread, True frame threads always."""
    import av

    _check_args(num_frames, size, start, end)
    if not data:
        raise ValueError("empty video bytes")
    if planned:
        with _open(data) as container:
            try:
                out = _decode_planned(container, _video_stream(container, frame_threads), start, end, num_frames,
                                      size)
            except av.FFmpegError:
                out = None  # the reference decides (and raises ValueError) on what it cannot decode either
        if out is not None:
            return out
    with _open(data) as container:
        try:
            return _decode_sequential(container, _video_stream(container, frame_threads), start, end, num_frames,
                                      size)
        except av.FFmpegError as err:
            raise ValueError(f"cannot decode video: {type(err).__name__}: {err}") from None


def _open(data: bytes):
    import av

    try:
        return av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot open video ({len(data)} bytes): {type(err).__name__}: {err}") from None


def _video_stream(container, frame_threads: Optional[bool]):
    if not container.streams.video:
        raise ValueError("no video stream in the container")
    stream = container.streams.video[0]
    cc = stream.codec_context
    if frame_threads is None:
        frame_threads = (cc.width or 0) * (cc.height or 0) >= 640 * 360  # tiny clips decode faster on one
    if frame_threads:
        stream.thread_type = "AUTO"
    return stream


def _decode_planned(container, stream, start: Optional[float], end: Optional[float], num_frames: int,
                    size: int) -> Optional[np.ndarray]:
    """The sampled frames from the packets' timestamps, decoding only what they need; None where the plan cannot
    be made or kept (see the module docstring), for the reference to decide."""
    from av.video.reformatter import VideoReformatter

    tb = stream.time_base
    hi = end if end is not None else _declared_end(container, stream)
    if tb is None or hi is None:
        return None
    packets, past_hi = _window_packets(container, stream, start, hi)
    if not packets:  # none, or one without a timestamp
        return None
    order = sorted(packets, key=lambda p: p.pts)
    starts = np.array([float(p.pts * tb) for p in order])
    if start is not None and start > 0 and starts[0] > start + _TOLERANCE:
        return None  # the seek overshot
    lo = starts[0] if start is None else start
    if hi <= lo:
        return None
    targets = sample_times(lo, hi, num_frames)
    if not past_hi:  # the video ends inside the window: the reference's end checks
        last = order[-1]
        step = starts[-1] - starts[-2] if len(starts) > 1 else 0.0
        frame_len = float(last.duration * tb) if last.duration else step
        video_end = starts[-1] + frame_len
        past = (hi > video_end + frame_len + _TOLERANCE if end is not None
                else targets[-1] >= starts[-1] + 2 * frame_len + _TOLERANCE)
        if past or (start is not None and start >= video_end):
            return None
    picked = [order[k].pts for k in pick_frames(starts, targets)]
    wanted = set(picked)
    upto = max(i for i, p in enumerate(packets) if p.pts in wanted)  # decode order: later packets are not needed
    cc, reformatter, got = stream.codec_context, VideoReformatter(), {}
    for packet in [*packets[: upto + 1], None]:
        # a non-reference frame nobody samples is skipped inside FFmpeg; reference frames always decode
        cc.skip_frame = "DEFAULT" if packet is None or packet.pts in wanted else "NONREF"
        for frame in stream.decode(packet):
            if frame.pts in wanted and frame.pts not in got:
                got[frame.pts] = _to_rgb(frame, size, reformatter, threads=1)
    if len(got) < len(wanted):
        return None  # the decoder dropped a sampled frame (e.g. a leading B-frame of an open GOP)
    return np.stack([got[p] for p in picked])


def _window_packets(container, stream, start: Optional[float], hi: float) -> tuple[Optional[list], bool]:
    """(packets in decode order from the keyframe at or before ``start`` until every frame starting before ``hi``
    is among them, whether the stream goes on past ``hi``); packets None when one has no timestamp."""
    tb = stream.time_base
    if start is not None and start > 0:
        container.seek(int(start / tb), stream=stream, backward=True, any_frame=False)
    packets = []
    for packet in container.demux(stream):
        if packet.pts is None:
            if packet.size:
                return None, False
            continue  # the demuxer's empty end-of-stream packet
        packets.append(packet)
        dts = packet.dts if packet.dts is not None else packet.pts
        if dts * tb > hi + _TOLERANCE:  # pts >= dts: every later packet lies past the window
            return packets, True
    return packets, False


def _decode_sequential(container, stream, start: Optional[float], end: Optional[float], num_frames: int,
                       size: int) -> np.ndarray:
    hi = end if end is not None else _declared_end(container, stream)
    if hi is None:  # no duration in the container: find the end by a first pass (rare; no frames kept)
        hi = _scan_end(container.decode(stream))
        container.seek(0, stream=stream)
    if start is not None and start > 0:
        container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        out = _sample_stream(container.decode(stream), start, hi, num_frames, size, after_seek=True,
                             strict_end=end is not None)
        if out is not None:
            return out
        container.seek(0, stream=stream)  # the seek landed past start (odd index): decode from the start
    out = _sample_stream(container.decode(stream), start, hi, num_frames, size, after_seek=False,
                         strict_end=end is not None)
    assert out is not None
    return out


def _declared_end(container, stream) -> Optional[float]:
    """End of the video stream in seconds as the container declares it (None when it does not)."""
    if stream.duration is not None and stream.time_base is not None:
        return float((stream.duration + (stream.start_time or 0)) * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _frame_times(frames):
    """(time, duration or None, frame) in presentation order, skipping frames without a timestamp."""
    for frame in frames:
        if frame.time is None:
            continue
        dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None
        yield frame.time, dur, frame


def _scan_end(frames) -> float:
    t_end = None
    for t, dur, _ in _frame_times(frames):
        t_end = t + (dur or 0.0)
    if t_end is None:
        raise ValueError("no frame could be decoded")
    return t_end


def _sample_stream(frames, start: Optional[float], hi: float, num_frames: int, size: int,
                   after_seek: bool, strict_end: bool = True) -> Optional[np.ndarray]:
    """Pick the sampled frames while decoding, holding one undecided frame at a time (memory stays flat on long
    videos). Returns None when ``after_seek`` and the first frame lies past ``start`` (the seek overshot).

    A window that reaches past the decoded frames raises (as decord's path does): one that starts at or after
    their end, or, with ``strict_end`` (the caller gave ``end``), one whose end lies more than a frame past them;
    without it (``hi`` is the container's declared end) the last sampled time may lie two frames past them."""
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    out = np.empty((num_frames, size, size, 3), np.uint8)
    targets: Optional[np.ndarray] = None
    j, prev, step = 0, None, None
    for t, dur, frame in _frame_times(frames):
        if targets is None:
            if after_seek and t > start + _TOLERANCE:
                return None
            lo = t if start is None else start
            if hi <= lo:
                raise ValueError(f"empty window [{lo:.3f}, {hi:.3f}) s")
            targets = sample_times(lo, hi, num_frames)
        if prev is not None:
            step = t - prev[0]
            rgb = None
            while j < num_frames and targets[j] < t - _TOLERANCE:  # prev's interval [prev_t, t) holds target j
                rgb = _to_rgb(prev[2], size, reformatter) if rgb is None else rgb
                out[j] = rgb
                j += 1
        prev = (t, dur, frame)
        if j == num_frames:
            return out
    if prev is None:
        raise ValueError("no frame could be decoded" if start is None else f"no frame at or after start={start}s")
    last_t, last_dur, last = prev
    frame_len = last_dur or step or 0.0
    video_end = last_t + frame_len  # the last frame lasts its duration
    # containers round their duration: a frame of slack on the window's end, two on a sampled time
    past = hi > video_end + frame_len + _TOLERANCE if strict_end else targets[-1] >= last_t + 2 * frame_len + _TOLERANCE
    if past or (start is not None and start >= video_end):
        raise ValueError(f"window [{start or 0.0:.3f}, {hi:.3f}) s lies past the decoded video "
                         f"(frames end near {video_end:.3f}s): truncated video or window past the end")
    out[j:] = _to_rgb(last, size, reformatter)
    return out


def decode_frames_decord(data: bytes, num_frames: int, size: int, start: Optional[float] = None,
                         end: Optional[float] = None) -> np.ndarray:
    """Same contract and sampling rule as :func:`decode_frames`, decoded by decord (a peer for the data benchmark).

    Resizing goes through libswscale as in :func:`decode_frames`, so both return the same pixels for the same
    frames. Raises ImportError when decord is not installed. decord 0.6 cannot copy out frames whose width is not
    a multiple of 32 (its own bug); such videos raise ValueError here, while :func:`decode_frames` reads them.
    """
    import decord

    _check_args(num_frames, size, start, end)
    if not data:
        raise ValueError("empty video bytes")
    try:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        n = len(reader)
        if n == 0:
            raise ValueError("no frame could be decoded")
        stamps = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64)  # [n, 2] start, end
        lo = stamps[0, 0] if start is None else start
        hi = stamps[-1, 1] if end is None else end
        if hi > stamps[-1, 1] + (stamps[-1, 1] - stamps[-1, 0]) + _TOLERANCE or lo >= stamps[-1, 1]:
            raise ValueError(f"window [{lo:.3f}, {hi:.3f}) s lies past the video (ends at {stamps[-1, 1]:.3f}s)")
        idx = pick_frames(stamps[:, 0], sample_times(lo, hi, num_frames))
        unique, inverse = np.unique(idx, return_inverse=True)
        batch = reader.get_batch(unique.tolist()).asnumpy()  # [U, H, W, 3] RGB
    except (decord.DECORDError, RuntimeError) as err:  # decord reports unreadable input as a RuntimeError
        raise ValueError(f"cannot decode video: {str(err)[:200]}") from None
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    resized = [_resize_array(frame, size, reformatter) for frame in batch]
    return np.stack([resized[j] for j in inverse.reshape(-1)])


def _resize_array(rgb: np.ndarray, size: int, reformatter) -> np.ndarray:
    """uint8 [H,W,3] -> [size,size,3] with the same libswscale resize + centre crop as :func:`decode_frames`."""
    import av

    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return _to_rgb(frame, size, reformatter)


def augment_clips(video: np.ndarray, rng: np.random.Generator, hflip: float = 0.0, max_shift: int = 0) -> np.ndarray:
    """Training augmentation of uint8 clips [B,T,H,W,C] (one transform per clip, the same for all its frames):
    mirror left-right with probability ``hflip``; translate by (dy, dx) drawn uniformly from
    [-max_shift, max_shift], replicating the edge pixels. Returns a new array; the input is not modified."""
    video = np.asarray(video)
    if video.ndim != 5:
        raise ValueError(f"augment_clips: expected clips [B,T,H,W,C], got shape {video.shape}")
    b, h, w = video.shape[0], video.shape[2], video.shape[3]
    out = video.copy()
    flip = rng.random(b) < hflip if hflip > 0 else np.zeros(b, bool)
    out[flip] = out[flip, :, :, ::-1]
    s = int(max_shift)
    if s > 0:
        if s >= min(h, w):
            raise ValueError(f"augment_clips: max_shift {s} must be smaller than the frame ({h}x{w})")
        padded = np.pad(out, ((0, 0), (0, 0), (s, s), (s, s), (0, 0)), mode="edge")
        dy, dx = rng.integers(-s, s + 1, size=(2, b))
        for i in range(b):  # a clip's window into its padded frames: shifting by (dy, dx)
            out[i] = padded[i, :, s - dy[i]:s - dy[i] + h, s - dx[i]:s - dx[i] + w]
    return out
