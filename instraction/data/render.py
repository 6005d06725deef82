"""SynthKitchen pixels: objects, the motion of each verb, a vectorised rasteriser and the H.264 encoder.

A clip shows ONE object (egg, bowl, pan, ...) doing a sequence of actions. Everything a single frame shows is a
*pose* (position, orientation, size, mirror/face, split gap, squash, a particle column); a verb is a way the
pose changes over the action, never a pose of its own:

    verb    what changes over the action (W = canvas width; every move is ~30% of W)
    slide   x moves 0.3 W, straight                roll    x moves 0.3 W, turning a quarter per slot
    lift    y moves 0.3 W up and the object grows  drop    y falls 0.3 W and the object shrinks
    shake   x jumps +-0.15 W every sample slot     chop    y jumps +-0.15 W every sample slot (strokes)
    stir    a large circle (r 0.2 W), slow         whisk   a small circle (r 0.12 W), fast
    pour    tilts 45 deg per slot, particles fall  flip    half turn about its long axis: face and mirror swap
    crack   the two halves split 0.2 W apart       press   the object flattens to 55% of its height

No single frame gives the verb away: every action starts from a random pose, and the states some verbs drive
(split, squashed, particles, foreshortened/back face, size) also appear *at rest* under the other verbs with the
distribution the driving verb produces (``nuisance`` = how often). Only the change between frames tells the verbs
apart, and each change is visible between two consecutive sampled frames (see ``action_poses``).
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Callable

import numpy as np

R_UNIT = 0.16  # object radius / canvas width
TRAVEL = 0.30  # translation of slide / roll / lift / drop, fraction of W
AMP = 0.15  # half stroke of shake / chop: consecutive samples are 2 * AMP = 0.3 W apart
STIR_R, WHISK_R = 0.20, 0.12  # circle radii, fraction of W
GAP = 0.20  # crack: opening of the two halves, fraction of W
SQUASH = 0.45  # press: height lost
GROW = 0.35  # lift / drop: relative size change
FORE_MIN = 0.45  # flip: narrowest foreshortening (edge-on would make the object vanish)
BAND = (0.25, 0.75)  # the object centre stays in this band (fraction of W) at every sampled frame
ROLL_TURN, POUR_TILT = np.pi / 2, np.pi / 4  # per slot: a fixed rate keeps long actions as visible as short ones
N_PARTICLES = 3

# name -> (body RGB, accent RGB, particle RGB); shapes are in ``_SHAPES``.
OBJECT_COLORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "egg": ((240, 232, 205), (200, 170, 120), (250, 200, 40)),
    "tomato": ((205, 45, 35), (40, 120, 40), (225, 70, 55)),
    "dough": ((222, 190, 140), (190, 150, 100), (245, 240, 225)),
    "bowl": ((60, 100, 190), (160, 195, 240), (250, 250, 250)),
    "pan": ((75, 78, 88), (35, 30, 28), (250, 205, 90)),
    "knife": ((200, 205, 215), (100, 62, 30), (215, 215, 215)),
    "carrot": ((240, 125, 30), (50, 150, 50), (250, 160, 70)),
    "lemon": ((245, 220, 60), (180, 200, 60), (250, 240, 150)),
}


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(body, accent) boolean masks of object ``name`` at unit coordinates (u along its orientation mark)."""
    if name == "egg":  # blunt end at -u
        return u**2 + (v / (0.78 - 0.12 * u)) ** 2 <= 1.0, np.zeros_like(u, bool)
    if name == "tomato":
        return u**2 + v**2 <= 0.85, (u - 0.78) ** 2 + v**2 <= 0.07
    if name == "dough":
        return u**4 + (v / 0.85) ** 4 <= 1.0, np.zeros_like(u, bool)
    if name == "bowl":
        disc = u**2 + v**2
        return disc <= 1.0, disc <= 0.38
    if name == "pan":
        return u**2 + v**2 <= 0.64, (u >= 0.7) & (u <= 1.55) & (np.abs(v) <= 0.17)
    if name == "knife":
        blade = (u >= -1.25) & (u <= 0.35) & (np.abs(v) <= 0.3 * np.clip((u + 1.25) / 0.5, 0.0, 1.0))
        return blade, (u > 0.35) & (u <= 1.15) & (np.abs(v) <= 0.2)
    if name == "carrot":
        body = (u >= -1.2) & (u <= 0.75) & (np.abs(v) <= 0.1 + 0.5 * (u + 1.2) / 1.95)
        return body, (u > 0.75) & (u <= 1.15) & (np.abs(v) <= 0.3)
    if name == "lemon":
        body = (u / 1.05) ** 2 + (v / 0.72) ** 2 <= 1.0
        return body, (np.abs(u) > 0.9) & (np.abs(u) <= 1.2) & (np.abs(v) <= 0.15)
    raise KeyError(f"unknown SynthKitchen object {name!r}; known: {sorted(OBJECT_COLORS)}")


# ------------------------------------------------------------------------------------------------ poses

Pose = dict[str, np.ndarray]  # per frame: cx, cy, theta, scale, fore, squash, gap, parts, phase  (each [F])


def rest_pose(n: int, width: int, rng: np.random.Generator, nuisance: float) -> Pose:
    """A random static pose held for ``n`` frames; the states verbs drive appear with probability ``nuisance``,
    drawn as the driving verb would show them at a random moment (so a frame cannot tell the verb)."""
    lo, hi = BAND[0] * width, BAND[1] * width
    u = rng.random(4)
    show = rng.random(4) < nuisance
    mirror = rng.choice([-1.0, 1.0])
    fore = mirror * _foreshorten(u[0]) if show[0] else mirror
    const = {
        "cx": rng.uniform(lo, hi), "cy": rng.uniform(lo, hi), "theta": rng.uniform(0, 2 * np.pi),
        "scale": rng.uniform(0.85, 1.0) * (1 + GROW * rng.random()), "fore": fore,
        "gap": (rng.uniform(0, 0.04) + GAP * u[1]) * width if show[1] else 0.0,
        "squash": 1.0 - SQUASH * u[2] if show[2] else 1.0,
        "parts": float(show[3]), "phase": rng.random(),
    }
    return {k: np.full(n, float(v)) for k, v in const.items()}


def _foreshorten(p):
    """Signed width factor of a half turn about the long axis at progress ``p`` (sign flips at p = 0.5)."""
    p = np.asarray(p, float)
    return np.where(p < 0.5, 1.0, -1.0) * np.maximum(np.abs(np.cos(np.pi * p)), FORE_MIN)


def _path_start(rng: np.random.Generator, direction: float, width: int, length: float) -> float:
    """Start coordinate so a straight move of ``length`` px in ``direction`` stays inside the band."""
    lo, hi = BAND[0] * width, BAND[1] * width
    if direction > 0:
        return rng.uniform(lo, max(lo, hi - length))
    return rng.uniform(min(hi, lo + length), hi)


def _slide(p, slots, pose, rng, width):
    d = rng.choice([-1.0, 1.0])
    pose["cx"][:] = _path_start(rng, d, width, TRAVEL * width) + d * TRAVEL * width * p


def _roll(p, slots, pose, rng, width):
    d = rng.choice([-1.0, 1.0])
    pose["cx"][:] = _path_start(rng, d, width, TRAVEL * width) + d * TRAVEL * width * p
    pose["theta"] += d * ROLL_TURN * p * slots  # turns in the direction it rolls


def _lift(p, slots, pose, rng, width):
    pose["cy"][:] = _path_start(rng, -1.0, width, TRAVEL * width) - TRAVEL * width * p
    pose["scale"][:] = rng.uniform(0.85, 1.0) * (1 + GROW * p)  # comes towards the (top-down) camera


def _drop(p, slots, pose, rng, width):
    pose["cy"][:] = _path_start(rng, 1.0, width, TRAVEL * width) + TRAVEL * width * p
    pose["scale"][:] = rng.uniform(0.85, 1.0) * (1 + GROW * (1 - p))


def _oscillate(p, slots):
    # one stroke per sample slot; the sampled frame of each slot (progress (j + 0.5) / slots) sits at an extreme
    return np.sin(np.pi * p * slots)


def _centre(rng: np.random.Generator, reach: float, width: int, size: int = 1) -> np.ndarray:
    """Centre of a motion reaching ``reach`` (fraction of W) around it, so it stays in the band."""
    return rng.uniform(BAND[0] + reach, BAND[1] - reach, size=size) * width


def _shake(p, slots, pose, rng, width):
    pose["cx"][:] = _centre(rng, AMP, width) + rng.choice([-1.0, 1.0]) * AMP * width * _oscillate(p, slots)


def _chop(p, slots, pose, rng, width):
    pose["cy"][:] = _centre(rng, AMP, width) + rng.choice([-1.0, 1.0]) * AMP * width * _oscillate(p, slots)


def _circle(p, slots, pose, rng, width, radius, turns_per_slot):
    # the sampled frames (p * slots = j + 0.5) sit on the circle's axis points, so the move between two of them is
    # always diagonal: circles never look like the straight, axis-aligned moves of slide/lift/shake/chop
    start = rng.integers(4) * np.pi / 2
    angle = start + rng.choice([-1.0, 1.0]) * 2 * np.pi * turns_per_slot * (p * slots - 0.5)
    cx, cy = _centre(rng, max(radius - 0.05, 0.0), width, size=2)
    pose["cx"][:] = cx + radius * width * np.cos(angle)
    pose["cy"][:] = cy + radius * width * np.sin(angle)


def _stir(p, slots, pose, rng, width):
    _circle(p, slots, pose, rng, width, STIR_R, 0.25)  # slow: a quarter turn per slot


def _whisk(p, slots, pose, rng, width):
    # fast: 1.25 turns per slot, so consecutive sampled frames still sit a quarter turn apart (not aliased to 0)
    _circle(p, slots, pose, rng, width, WHISK_R, 1.25)


def _pour(p, slots, pose, rng, width):
    pose["theta"] += rng.choice([-1.0, 1.0]) * POUR_TILT * p * slots
    pose["parts"][:] = 1.0
    pose["phase"][:] = rng.random() + 0.35 * p * slots  # particles fall 0.35 of their spacing per slot


def _flip(p, slots, pose, rng, width):
    pose["fore"][:] = rng.choice([-1.0, 1.0]) * _foreshorten(p)


def _crack(p, slots, pose, rng, width):
    pose["gap"][:] = (rng.uniform(0, 0.04) + GAP * p) * width


def _press(p, slots, pose, rng, width):
    pose["squash"][:] = 1.0 - SQUASH * p


def _idle(p, slots, pose, rng, width):
    pose["cx"] += rng.choice([-1.0, 1.0]) * 0.02 * width * p  # barely moves (chatter, gaps between segments)


MOTIONS: dict[str, Callable] = {
    "slide": _slide, "roll": _roll, "lift": _lift, "drop": _drop, "shake": _shake, "chop": _chop,
    "stir": _stir, "whisk": _whisk, "pour": _pour, "flip": _flip, "crack": _crack, "press": _press,
}


def action_poses(verb: str | None, slots: int, frames_per_slot: int, width: int, rng: np.random.Generator,
                 nuisance: float) -> Pose:
    """Poses of one action spanning ``slots`` sample slots (``slots * frames_per_slot`` frames); verb None = idle.

    Frame f shows progress p = (f + o) / F with o = 0.5 for odd frames_per_slot and 0 for even, so the frame a
    uniform sampler takes from slot j (the one holding the slot's midpoint) shows progress (j + 0.5) / slots.
    """
    n = slots * frames_per_slot
    offset = 0.5 if frames_per_slot % 2 else 0.0
    p = (np.arange(n) + offset) / n
    pose = rest_pose(n, width, rng, nuisance)
    (MOTIONS[verb] if verb is not None else _idle)(p, slots, pose, rng, width)
    return pose


def concat_poses(poses: list[Pose]) -> Pose:
    return {k: np.concatenate([pose[k] for pose in poses]) for k in poses[0]}


# ------------------------------------------------------------------------------------------------ pixels


def background(width: int, rng: np.random.Generator) -> np.ndarray:
    """float [W,W,3]: a counter top (a low-saturation colour with a soft lighting gradient)."""
    base = rng.uniform(95, 185) + rng.uniform(-25, 25, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.arange(width) - width / 2) / width
    grad = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    return np.clip(base[None, None, :] + rng.uniform(10, 30) * grad[..., None], 0, 255)


def render(obj: str, pose: Pose, bg: np.ndarray, supersample: int = 2) -> np.ndarray:
    """uint8 [F, W, W, 3]: ``obj`` at every frame's pose over background ``bg`` [W,W,3], antialiased by
    ``supersample`` x ``supersample`` supersampling (all frames in one vectorised pass)."""
    width, ss = bg.shape[0], supersample
    body_rgb, accent_rgb, part_rgb = (np.asarray(c, np.float32) for c in OBJECT_COLORS[obj])
    axis = ((np.arange(width * ss) + 0.5) / ss).astype(np.float32)  # float32: half the time of float64
    gx, gy = axis[None, None, :], axis[None, :, None]
    col = {k: pose[k].astype(np.float32)[:, None, None] for k in pose}
    dx, dy = gx - col["cx"], gy - col["cy"]
    cos, sin = np.cos(col["theta"]), np.sin(col["theta"])
    u_px, v_px = dx * cos + dy * sin, -dx * sin + dy * cos  # object frame, pixels
    half = col["gap"] / 2  # crack: the halves u < 0 and u > 0 move apart along u
    apart = np.abs(u_px) >= half
    u_px = u_px - np.sign(u_px) * half
    radius = R_UNIT * width * col["scale"]
    widen = 1.0 + 0.5 * (1.0 - col["squash"])  # press flattens and spreads
    su, sv = radius * widen * col["fore"], radius * col["squash"]
    u, v = u_px / su, v_px / sv  # unit shape coordinates; negative fore mirrors the shape
    body, accent = _shape_mask(obj, u, v)
    body, accent = body & apart, accent & apart
    inside = body | accent
    # layers, later ones on top: outline (1 px, visible on any counter), body, accent, mark, particles
    label = np.zeros(body.shape, np.uint8)
    label[_dilate(inside, ss) & ~inside] = 1
    label[body] = 2
    label[accent] = 3
    label[(u >= 0.1) & (u <= 0.85) & (np.abs(v) <= 0.17) & body] = 4  # orientation mark: a clock hand
    label[_particles(pose, width, radius[:, 0, 0], gx, gy)] = 5
    face = np.where(pose["fore"] < 0, 0.6, 1.0).astype(np.float32)[:, None]  # the back face is darker
    mark_rgb = np.float32(25.0 if body_rgb @ [0.299, 0.587, 0.114] > 110 else 235.0)
    colors = [np.full(3, 20.0, np.float32), body_rgb, accent_rgb, np.full(3, mark_rgb), part_rgb]
    # composite at canvas resolution from each layer's coverage (cheaper than blending supersampled images)
    n = len(label)
    img = np.zeros((n, width, width, 3), np.float32)
    covered = np.zeros((n, width, width), np.float32)
    for layer, rgb in enumerate(colors, start=1):
        hit = label == layer
        cov = sum(hit[:, i::ss, j::ss].astype(np.uint8) for i in range(ss) for j in range(ss)) / np.float32(ss * ss)
        shade = face if layer in (2, 3) else np.ones_like(face)
        img += cov[..., None] * (shade[:, None, None, :] * rgb)
        covered += cov
    img += (1.0 - covered)[..., None] * bg.astype(np.float32)[None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation of [F,H,W] masks by ``steps`` pixels (4-neighbourhood, repeated)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[:, :, 1:] |= out[:, :, :-1]
        grown[:, :, :-1] |= out[:, :, 1:]
        out = grown
    return out


def _particles(pose: Pose, width: int, radius: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """[F,H,W] mask of a column of ``N_PARTICLES`` drops below the spout (the mark end); ``phase`` moves them down."""
    on = pose["parts"] > 0.5
    hit = np.zeros((len(on), gy.shape[1], gx.shape[2]), bool)
    if not on.any():
        return hit
    reach = 1.15 * radius * pose["fore"]  # the spout is past the mark end (and mirrors with the shape)
    sx = pose["cx"] + reach * np.cos(pose["theta"])
    sy = pose["cy"] + reach * np.sin(pose["theta"])
    spacing = TRAVEL * width / N_PARTICLES
    for k in range(N_PARTICLES):
        drop = ((k + pose["phase"]) % N_PARTICLES) * spacing + 1.5
        px, py = (sx + 0.6 * np.sin(3.0 * k + 1.0)).astype(np.float32), (sy + drop).astype(np.float32)
        hit |= ((gx - px[:, None, None]) ** 2 + (gy - py[:, None, None]) ** 2 <= 1.0) & on[:, None, None]
    return hit


# ------------------------------------------------------------------------------------------------ encoding


def encode_h264(frames: np.ndarray, fps: int, crf: int = 12, keyint: int | None = None) -> bytes:
    """uint8 [F,H,W,3] RGB (H, W even: yuv420p) -> H.264 mp4 bytes; frame i has pts i / fps.

    One encoder thread and ultrafast preset: tiny frames encode fastest that way and the bytes are reproducible.
    ``keyint`` (default 2 * fps) bounds how far a reader decodes after seeking into a long video.
    """
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F,H,W,3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {frames.shape[2]}x{frames.shape[1]}")
    keyint = keyint or 2 * fps
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": str(crf), "g": str(keyint), "threads": "1"}
        stream.codec_context.time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
