"""Band definition, PyTorch reference and dispatch of kernels.banded_cross_attention (CPU, no Triton needed).

    python -m pytest tests/test_banded_attention.py -q
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from instraction import kernels
from instraction.kernels.banded_attention import band, band_mask, banded_cross_attention, banded_cross_attention_reference
from instraction.kernels.banded_attention.benchmark import Shape, flex_block_mask, make_inputs
from instraction.kernels.banded_attention.reference import latent_range

# K < T, K = T, K > T, K not dividing T (and the reverse); window 0, small, wider than the clip.
LATENTS, FRAMES, WINDOWS = (1, 2, 5, 8, 13, 64), (1, 3, 7, 8, 32), (0, 1, 2, 40)


def brute_band(K: int, T: int, w: int) -> list[set[int]]:
    """The band rule (docs/ARCHITECTURE.md) with exact rationals: latent i sees max(0, floor(iT/K)-w) <= f < min(T, ceil((i+1)T/K)+w)."""
    out = []
    for i in range(K):
        lo = max(0, math.floor(Fraction(i * T, K)) - w)
        hi = min(T, math.ceil(Fraction((i + 1) * T, K)) + w)
        out.append({f for f in range(T) if lo <= f < hi})
    return out


@pytest.mark.parametrize("K", LATENTS)
def test_band_matches_design_rule(K):
    for T in FRAMES:
        for w in WINDOWS:
            lo, hi = band(K, T, w)
            expected = brute_band(K, T, w)
            assert [set(range(a, b)) for a, b in zip(lo.tolist(), hi.tolist())] == expected, (T, w)
            assert all(expected), "every latent sees at least one frame"
            assert (lo.diff() >= 0).all() and (hi.diff() >= 0).all(), "monotone bands (the kernels rely on it)"


@pytest.mark.parametrize("K", LATENTS)
def test_latent_range_is_exactly_the_latents_seeing_a_frame_span(K):
    for T in FRAMES:
        for w in WINDOWS:
            seen = brute_band(K, T, w)
            for a in range(T):
                for b in range(a, min(T, a + 3)):
                    i0, i1 = latent_range(a, b, K, T, w)
                    expected = [i for i in range(K) if seen[i] & set(range(a, b + 1))]
                    assert list(range(i0, i1)) == expected, (T, w, a, b)


def test_band_mask_is_frame_major():
    K, T, P, w = 5, 7, 3, 1
    mask = band_mask(K, T, P, w)
    assert mask.shape == (K, T * P) and mask.dtype == torch.bool
    for i, frames in enumerate(brute_band(K, T, w)):
        assert {n // P for n in mask[i].nonzero().flatten().tolist()} == frames
        assert int(mask[i].sum()) == len(frames) * P


@pytest.mark.parametrize("window", [0, 1, 9])
def test_reference_matches_dense_masked_sdpa(window):
    q, k, v = make_inputs(2, 3, 5, 7, 3, 16, torch.float64, "cpu", seed=1)
    mask = band_mask(5, 7, 3, window)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(banded_cross_attention_reference(q, k, v, 7, window), expected)
    if window >= 7:  # the band covers the whole clip: plain attention
        torch.testing.assert_close(banded_cross_attention_reference(q, k, v, 7, window),
                                   torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_reference_gradcheck_and_scale():
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 2, 5, 4, 2, 8, torch.float64, "cpu", seed=2))
    assert torch.autograd.gradcheck(lambda a, b, c: banded_cross_attention_reference(a, b, c, 4, 1, 0.3), (q, k, v))
    q2 = q.detach() * 0.3 / 8**-0.5  # scale only multiplies the scores
    torch.testing.assert_close(banded_cross_attention_reference(q.detach(), k.detach(), v.detach(), 4, 1, 0.3),
                               banded_cross_attention_reference(q2, k.detach(), v.detach(), 4, 1))


def test_reference_keeps_half_dtype_and_is_finite_for_large_scores():
    q, k, v = make_inputs(1, 1, 5, 7, 3, 16, torch.bfloat16, "cpu", seed=3)
    out = banded_cross_attention_reference(q * 100, k * 100, v, 7, 0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_public_dispatch_on_cpu():
    q, k, v = make_inputs(2, 2, 5, 7, 3, 16, torch.float32, "cpu", seed=4)
    expected = banded_cross_attention_reference(q, k, v, 7, 1)
    for backend in ("auto", "torch"):
        torch.testing.assert_close(banded_cross_attention(q, k, v, 7, 1, backend=backend), expected)
    assert kernels.banded_cross_attention is banded_cross_attention
    with pytest.raises(ValueError, match="backend"):
        banded_cross_attention(q, k, v, 7, 1, backend="cuda")


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda q, k, v: (q, k[:, :, :-1], v[:, :, :-1]), "frames"),  # 20 keys are not 7 frames
        (lambda q, k, v: (q, k, v[..., :8]), "same shape"),
        (lambda q, k, v: (q[..., :8], k, v), "disagree"),
        (lambda q, k, v: (q, k.double(), v.double()), "dtype"),
        (lambda q, k, v: (q[0], k, v), "4-D"),
    ],
)
def test_bad_inputs_raise_clearly(change, match):
    q, k, v = make_inputs(1, 2, 5, 7, 3, 16, torch.float32, "cpu", seed=5)
    with pytest.raises(ValueError, match=match):
        banded_cross_attention(*change(q, k, v), 7, 1)
    with pytest.raises(ValueError, match="window"):
        banded_cross_attention(q, k, v, 7, -1)


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")  # eager = the maths path
@pytest.mark.parametrize("block_size", [128, (16, 128)])
def test_flex_attention_baseline_computes_the_same_band(block_size):
    """The benchmark's FlexAttention BlockMask (both query-block sizes) is the same attention as the reference."""
    from torch.nn.attention.flex_attention import flex_attention

    shape = Shape(1, 2, 20, 7, 5, 16, 1)
    q, k, v = make_inputs(shape.B, shape.H, shape.K, shape.T, shape.P, shape.D, torch.float32, "cpu", seed=6)
    out = flex_attention(q, k, v, block_mask=flex_block_mask(shape, "cpu", block_size))
    torch.testing.assert_close(out, banded_cross_attention_reference(q, k, v, shape.T, shape.window),
                               atol=1e-5, rtol=1e-5)
