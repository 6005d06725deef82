"""The train / bench split: by source video, never by clip, so no bench clip shares a video with training."""

from __future__ import annotations

import zlib

DEFAULT_HOLDOUT_FRACTION = 0.2
"""bench.holdout_fraction's default (tested equal): SynthKitchen keeps its unseen pairs to this split when it is
used without a full config."""


def is_holdout(source_video: str, fraction: float, seed: int = 0) -> bool:
    """True when ``source_video`` belongs to the held-out bench split (stable hash; same answer everywhere)."""
    if fraction <= 0.0:
        return False
    bucket = zlib.crc32(f"{seed}:{source_video}".encode("utf-8")) / 0xFFFFFFFF
    return bucket < fraction
