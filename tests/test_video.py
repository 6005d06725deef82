"""decode_frames / decode_frames_decord: the uniform sampling rule, seeking, resize + crop, and bad bytes.

    python -m pytest tests/test_video.py -q

Test clips encode their own frame index as a flat grey level (``4 + 5 * i``, crf 0), so a decoded frame says which
frame it is; the expected index of sample i is the frame whose interval [k/fps, (k+1)/fps) holds
t_i = start + (i + 0.5) * (end - start) / T.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from instraction.data import video
from instraction.data.render import encode_h264
from instraction.data.video import decode_frames, pick_frames, sample_times

FPS = 8

try:
    import decord  # noqa: F401

    DECODERS = [decode_frames, video.decode_frames_reference, video.decode_frames_decord]
except ImportError:  # decord is optional (x86_64 wheels only)
    DECODERS = [decode_frames, video.decode_frames_reference]


def index_clip(n: int, keyint: int = 8, width: int = 32, height: int = 32) -> bytes:
    """Frame i is flat grey 4 + 5 * (i % 48) with a blue level 20 + 40 * (i // 48) (up to 48 * 6 frames)."""
    i = np.arange(n)
    frames = np.empty((n, height, width, 3), np.uint8)
    frames[:] = (4 + 5 * (i % 48)).astype(np.uint8)[:, None, None, None]
    frames[..., 2] = (20 + 40 * (i // 48)).astype(np.uint8)[:, None, None]  # chroma is coarse: wide steps
    return encode_h264(frames, FPS, crf=0, keyint=keyint)


def decoded_index(frames: np.ndarray) -> list[int]:
    low = [int(round((f[..., 1].mean() - 4) / 5)) for f in frames]
    high = [int(round((f[..., 2].mean() - 20) / 40)) for f in frames]
    return [48 * h + lo for lo, h in zip(low, high)]


def expected_index(n: int, num_frames: int, start=None, end=None) -> list[int]:
    lo = 0.0 if start is None else start
    hi = n / FPS if end is None else end
    return [min(n - 1, math.floor(t * FPS + 1e-9)) for t in sample_times(lo, hi, num_frames)]


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    return index_clip(48)  # 6 s, a keyframe every second


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("num_frames,start,end", [
    (8, None, None),        # whole clip: frames 3, 9, ..., 45
    (4, 1.0, 3.0),          # window on frame boundaries
    (5, 0.3, 2.9),          # window off frame boundaries
    (8, 2.5, 3.0),          # more samples than frames in the window: repeats
    (6, 4.2, None),         # open end: until the end of the video
    (3, None, 1.0),         # open start: from the first frame
    (1, 5.0, 6.0),
])
def test_uniform_sampling_rule(long_clip, decoder, num_frames, start, end):
    out = decoder(long_clip, num_frames, 32, start, end)
    assert out.shape == (num_frames, 32, 32, 3) and out.dtype == np.uint8
    assert decoded_index(out) == expected_index(48, num_frames, start, end)


def test_whole_clip_indices_are_one_per_block():
    # T samples over T * r frames pick floor((i + 0.5) * r): the rule SynthKitchen's action layout relies on
    for r in (1, 2, 3):
        out = decode_frames(index_clip(8 * r), 8, 32)
        assert decoded_index(out) == [math.floor((i + 0.5) * r) for i in range(8)]


def test_pick_frames_interval_rule():
    starts = np.array([0.0, 0.125, 0.25, 0.375])
    times = np.array([-0.1, 0.0, 0.1249, 0.125, 0.3, 0.9])
    assert pick_frames(starts, times).tolist() == [0, 0, 0, 1, 2, 3]


def test_seek_decodes_only_near_the_window(monkeypatch):
    data = index_clip(240)  # 30 s, keyframe every 1 s
    seen = []
    real = video._frame_times

    def counting(frames):
        for item in real(frames):
            seen.append(item[0])
            yield item

    monkeypatch.setattr(video, "_frame_times", counting)
    out = video.decode_frames_reference(data, 4, 32, start=25.0, end=27.0)
    assert decoded_index(out) == expected_index(240, 4, 25.0, 27.0)
    assert min(seen) >= 24.0 - 1e-6, "decoding started far before the window: no seek"
    assert len(seen) <= 8 + 16 + 1, f"decoded {len(seen)} frames for a 2 s window"


def test_planned_path_reads_only_the_packets_near_the_window():
    data = index_clip(240)  # 30 s, keyframe every 1 s
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets, past_end = video._window_packets(container, stream, 25.3, 27.0)
    times = sorted(float(p.pts * stream.time_base) for p in packets)
    assert past_end and times[0] == pytest.approx(25.0), "the packets do not start at the keyframe before the window"
    assert len(packets) <= 8 * 2 + 2 and times[-2] <= 27.0 < times[-1]  # up to the first frame past the window


# ------------------------------------------------------------------- the planned path on long-GOP video with B-frames
def bit_clip(n: int, fps: int = FPS, keyint: int = 250) -> bytes:
    """Frame i shows i in binary: 8 blocks of 16x8 px, black or white (robust to lossy coding). Encoded as YouTube
    does, with B-frames (half of them non-reference, b-pyramid) and one keyframe per ``keyint`` frames."""
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        for b in range(8):
            frames[i, 16 * (b // 4): 16 * (b // 4) + 16, 8 * (b % 4): 8 * (b % 4) + 8] = 235 if i >> b & 1 else 16
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "medium", "crf": "18", "g": str(keyint), "sc_threshold": "0", "threads": "1",
                          "x264-params": "bframes=3:b-adapt=0:b-pyramid=normal"}
        stream.codec_context.time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def bit_index(frames: np.ndarray) -> list[int]:
    return [sum(1 << b for b in range(8) if f[16 * (b // 4) + 8, 8 * (b % 4) + 4].mean() > 128) for f in frames]


@pytest.fixture(scope="module")
def bframe_clip() -> bytes:
    data = bit_clip(96)  # 12 s, one keyframe (at 0)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        kept = sum(1 for _ in container.decode(stream))
    assert kept < 70, f"the clip should have non-reference frames to skip: {kept} of 96 are references"
    return data


@pytest.fixture
def no_fallback(monkeypatch):
    def fail(*args):
        raise AssertionError("decode_frames fell back to the sequential decoder")

    monkeypatch.setattr(video, "_decode_sequential", fail)


@pytest.mark.parametrize("frame_threads", [False, True])
@pytest.mark.parametrize("num_frames,start,end", [
    (8, None, None), (8, 1.3, 5.3), (4, 7.1, 11.1), (5, 0.3, 2.9), (8, 2.5, 3.0), (6, 9.2, None), (1, 11.0, 12.0),
])
def test_planned_path_samples_the_rule_on_long_gop_bframes(bframe_clip, no_fallback, num_frames, start, end,
                                                           frame_threads):
    out = video.decode_frames_variant(bframe_clip, num_frames, 32, start, end, frame_threads=frame_threads)
    assert out.shape == (num_frames, 32, 32, 3) and out.dtype == np.uint8
    assert bit_index(out) == expected_index(96, num_frames, start, end)


def test_planned_path_matches_the_reference_on_realistic_video(monkeypatch):
    from instraction.data.benchmark import random_windows, realistic_video

    seconds = 5.0
    data = realistic_video(seconds, width=320, height=180, gop=250)  # busy content, B-frames, keyframe at 0 only
    windows = [*random_windows(seconds, 3, seed=1), (None, None), (2.2, None)]
    assert all(a is None or a > 0.1 for a, _ in windows)  # none starts at the keyframe
    reference = [video.decode_frames_reference(data, 8, 112, a, b) for a, b in windows]
    monkeypatch.setattr(video, "_decode_sequential", lambda *a: pytest.fail("fell back to the reference"))
    for threads in (False, True):
        for (a, b), ref in zip(windows, reference):
            out = video.decode_frames_variant(data, 8, 112, a, b, frame_threads=threads)
            assert out.shape == (8, 112, 112, 3) and out.dtype == np.uint8
            assert np.array_equal(out, ref), f"window {a}-{b}, frame threads {threads}: pixels differ"


def test_planned_path_raises_value_error_on_garbage():
    for data in (b"\x00garbage" * 200, b"", bit_clip(16)[:300]):
        with pytest.raises(ValueError):
            decode_frames(data, 8, 224, 1.0, 5.0)


def test_cores_needed_and_the_paper_budget():
    from instraction.data.benchmark import cores_needed, paper_cpu_budget

    assert cores_needed(300.0, 6.0) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        cores_needed(300.0, 0.0)
    budget = paper_cpu_budget()  # configs/howto100m_viclip_b.yaml: 32 workers x 8 CPUs, 64 decode actors x 1 CPU
    assert budget == {"cpus_per_worker": 8.0, "num_workers": 32, "decode_cpus_per_gpu": 2.0}


@pytest.mark.parametrize("width,height", [(64, 48), (48, 64), (96, 64), (64, 96)])
def test_resize_shorter_side_and_centre_crop(width, height):
    # three bands along the longer side: red | green | blue; the crop keeps the middle and clips both ends
    frame = np.zeros((height, width, 3), np.uint8)
    long_axis = 1 if width > height else 0
    n = frame.shape[long_axis]
    bands = [(slice(0, n // 4), (220, 30, 30)), (slice(n // 4, 3 * n // 4), (30, 220, 30)),
             (slice(3 * n // 4, n), (30, 30, 220))]
    for sl, rgb in bands:
        if long_axis == 1:
            frame[:, sl] = rgb
        else:
            frame[sl, :] = rgb
    data = encode_h264(np.stack([frame] * 4), FPS, crf=0)
    # decord 0.6 cannot copy out frames whose width is not a multiple of 32 (its own bug): PyAV only there
    for decoder in DECODERS if width % 32 == 0 else [decode_frames]:
        out = decoder(data, 2, 32)
        assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
        first = out[0] if long_axis == 1 else out[0].transpose(1, 0, 2)  # walk along the long axis
        mid = first[16, 16].astype(int)
        assert mid[1] > 150 and mid[0] < 90, f"{decoder.__name__}: centre is not the middle band: {mid}"
        # the crop clips the long side symmetrically: its first pixels are red, its last ones blue
        assert first[16, 1, 0] > 150 and first[16, 30, 2] > 150, decoder.__name__


def _wav_bytes() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _faststart_mp4(path) -> bytes:
    """moov before mdat: a truncation then cuts frames, not the index (the other truncation case)."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "8"}
        for i in range(48):
            frame = np.full((32, 32, 3), 4 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda f: f.__name__)
def test_undecodable_bytes_raise_value_error(decoder, long_clip, tmp_path):
    faststart = _faststart_mp4(tmp_path / "fs.mp4")
    assert decoder(faststart, 4, 32).shape == (4, 32, 32, 3)
    bad = {
        "empty": b"",
        "garbage": b"\x00garbage" * 200,
        "truncated": long_clip[: len(long_clip) // 2],
        "truncated_faststart": faststart[: int(len(faststart) * 0.6)],
        "header_only": long_clip[:64],
    }
    if decoder is decode_frames:  # decord cannot open audio-only input at all (also a ValueError, tested above)
        bad["no_video_stream"] = _wav_bytes()
    for name, data in bad.items():
        with pytest.raises(ValueError):
            decoder(data, 4, 32)
            pytest.fail(f"{name} decoded without error")


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda f: f.__name__)
def test_bad_windows_and_arguments(decoder, long_clip):
    """The 6 s clip: windows that start at or after its end, end more than a frame past it (also when only the
    last sampled times lie past it), are empty, negative or not finite all raise; a window ending within one
    frame (1/8 s) of the end is the container's rounding and decodes."""
    nan, inf = float("nan"), float("inf")
    for kwargs in [dict(start=10.0, end=12.0), dict(start=3.0, end=3.0), dict(start=-1.0, end=1.0),
                   dict(start=2.0, end=9.0), dict(start=5.9, end=8.0), dict(start=4.0, end=12.0),
                   dict(start=5.9, end=6.5), dict(start=6.0, end=6.1), dict(start=nan, end=3.0),
                   dict(start=1.0, end=nan), dict(start=1.0, end=inf), dict(end=nan)]:
        with pytest.raises(ValueError):
            decoder(long_clip, 16, 32, **kwargs)
            pytest.fail(f"{kwargs} decoded without error")
    with pytest.raises(ValueError):
        decoder(long_clip, 0, 32)
    assert decoder(long_clip, 4, 32, start=5.0, end=6.1).shape == (4, 32, 32, 3)


@pytest.mark.skipif(len(DECODERS) < 2, reason="decord not installed")
def test_decord_matches_pyav_on_synthkitchen_clip():
    from instraction.data.config import SynthConfig
    from instraction.data.synthetic import build_sample

    sample, _ = build_sample(SynthConfig(), 0, 3)
    a = decode_frames(sample["mp4"], 8, 32)
    b = video.decode_frames_decord(sample["mp4"], 8, 32)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


# ------------------------------------------------------------------------------------------- training augmentation
def _dot_clips(b=64, t=3, size=16):
    """Clips with one bright pixel at (5, 3) in every frame: where it lands shows each clip's transform."""
    clips = np.zeros((b, t, size, size, 3), np.uint8)
    clips[:, :, 5, 3] = 255
    return clips


def test_augment_off_is_an_identity_copy():
    clips = _dot_clips()
    out = video.augment_clips(clips, np.random.default_rng(0))
    assert np.array_equal(out, clips) and out is not clips


def test_augment_hflip_mirrors_whole_clips_with_the_given_probability():
    clips = _dot_clips(b=400)
    out = video.augment_clips(clips, np.random.default_rng(0), hflip=0.5)
    flipped = out[:, :, 5, 16 - 1 - 3, 0] == 255  # [B,T]
    assert (flipped == flipped[:, :1]).all()  # all frames of a clip together
    assert 0.4 < flipped[:, 0].mean() < 0.6
    assert np.array_equal(out[flipped[:, 0]], clips[flipped[:, 0], :, :, ::-1])
    assert np.array_equal(out[~flipped[:, 0]], clips[~flipped[:, 0]])
    assert np.array_equal(clips, _dot_clips(b=400))  # the input is left alone
    always = video.augment_clips(clips[:3], np.random.default_rng(1), hflip=1.0)
    assert np.array_equal(always, clips[:3, :, :, ::-1])


def test_augment_shift_moves_every_frame_of_a_clip_by_one_offset_within_bounds():
    s, clips = 2, _dot_clips(b=200)
    clips[:, :, :, 0] = 7  # a left edge column: replicated, never zero-filled, when shifting right
    out = video.augment_clips(clips, np.random.default_rng(0), max_shift=s)
    offsets = set()
    for clip in out:
        ys, xs = np.nonzero(clip[:, :, :, 1] == 255)[1:]
        assert len(ys) == clip.shape[0]  # the dot survives once per frame
        assert len(set(zip(ys.tolist(), xs.tolist()))) == 1  # same offset in every frame
        dy, dx = int(ys[0]) - 5, int(xs[0]) - 3
        assert abs(dy) <= s and abs(dx) <= s
        offsets.add((dy, dx))
        assert (clip[:, :, 0] != 0).all() or dx < 0  # left edge replicated
    assert len(offsets) == (2 * s + 1) ** 2  # every offset is drawn
    again = video.augment_clips(clips, np.random.default_rng(0), max_shift=s)
    assert np.array_equal(out, again)  # the generator decides, nothing else


def test_augment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_shift"):
        video.augment_clips(_dot_clips(size=8), np.random.default_rng(0), max_shift=8)
    with pytest.raises(ValueError, match="B,T,H,W,C"):
        video.augment_clips(np.zeros((4, 8, 8, 3), np.uint8), np.random.default_rng(0), hflip=1.0)


def test_training_collate_augments_and_evaluation_collate_does_not():
    from instraction.config import ConfigError, load_config
    from instraction.data.examples import Collate

    cfg = load_config(None, ["data.augment.hflip=1.0", "data.size=16"])
    row = {"video": _dot_clips(b=2, t=cfg.data.num_frames),
           **{k: np.zeros((2, 4), np.int64) for k in ("text_ids", "mam_ids", "mam_labels")},
           "text_mask": np.ones((2, 4), bool), "neg_ids": np.zeros((2, 1, 4), np.int64),
           "neg_mask": np.zeros((2, 1), bool), "verb_ids": np.zeros((2, 1, 2), np.int64),
           "verb_mask": np.zeros((2, 1, 2), bool), "verb_count": np.zeros(2, np.int64)}
    plain = Collate(cfg.data)(row)["video"]
    train = Collate(cfg.data, augment_seed=(0, 0, 0))(row)["video"]
    assert torch.equal(train, plain.flip(-1)) and not torch.equal(train, plain)
    with pytest.raises(ConfigError, match="data.augment.hflip"):
        load_config(None, ["data.augment.hflip=1.5"])
