"""The analytic FLOP count (instraction/model/flops.py) against torch's FlopCounterMode at a small shape, per module.

    python -m pytest -q tests/test_flops.py
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from instraction.config import load_config
from instraction.model.flops import TRAIN_FACTOR, forward_flops
from instraction.model.instraction import build_model
from instraction.model.testing import make_dummy_batch

SMALL_VIT = ["model.video.kind=vit", "model.video.width=48", "model.video.layers=2", "model.video.heads=4",
             "model.video.patch_size=8", "model.perceiver.attention_backend=torch", "loss.dtw_backend=torch"]


def _counted(model, batch, backward: bool = False) -> tuple[int, dict[str, int]]:
    # The math SDPA backend decomposes attention into matmuls that FlopCounterMode sees (the fused CPU kernel is
    # not counted); the perceiver's reference attention is dense, so the count is compared with banded=False.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(batch)
        if backward:
            out["loss"].backward()
    per_module = {name.split(".", 1)[1]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()
                  if name.count(".") == 1}
    return counter.get_total_flops(), per_module


@pytest.mark.parametrize("overrides", [SMALL_VIT, ["model.perceiver.attention_backend=torch",
                                                   "loss.dtw_backend=torch"]], ids=["vit", "conv3d"])
def test_forward_flops_match_the_flop_counter_module_by_module(overrides):
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, 100)
    batch = make_dummy_batch(cfg, 100, 6)
    total, per_module = _counted(model, batch)
    analytic = forward_flops(model, batch, banded=False)
    for name in ("video", "text", "perceiver", "decoder", "video_proj", "text_proj", "verb_query"):
        assert analytic[name] == per_module[name], name
    assert analytic["total"] == total


def test_training_flops_are_three_forwards_within_the_skipped_input_gradients():
    cfg = load_config(None, SMALL_VIT)
    model = build_model(cfg, 100)
    batch = make_dummy_batch(cfg, 100, 6)
    total, _ = _counted(model, batch, backward=True)
    expected = TRAIN_FACTOR * forward_flops(model, batch, banded=False)["total"]
    # The backward skips the input gradient of the first layer (the video has none), so it runs a little under 2x.
    assert 0.95 * expected < total <= expected


def test_banded_count_covers_only_the_band():
    cfg = load_config(None, SMALL_VIT + ["model.perceiver.window=0"])
    model = build_model(cfg, 100)
    batch = make_dummy_batch(cfg, 100, 4)
    banded, dense = forward_flops(model, batch), forward_flops(model, batch, banded=False)
    b, t = batch["video"].shape[:2]
    k, p, c = model.perceiver.num_latents, model.video.grid**2, model.perceiver.width
    layers = cfg.model.perceiver.layers
    # window 0: each of K latents owns ceil-bounded T/K frames; with K = T = 8 that is exactly one frame each
    assert k == t
    assert dense["perceiver"] - banded["perceiver"] == layers * 4 * b * c * p * (k * t - k)
    assert dense["total"] - banded["total"] == dense["perceiver"] - banded["perceiver"]
