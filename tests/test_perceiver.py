"""Action Perceiver (Sec. 4.1): banded student latents, all-frame teacher stream, shared weights."""

import pytest
import torch

from instraction.model.perceiver import ActionPerceiver
from instraction.kernels.banded_attention import band

C, K, T, P = 16, 4, 8, 3


def _perceiver(window=1, layers=2, num_frames=T):
    torch.manual_seed(0)
    return ActionPerceiver(C, K, num_frames, layers=layers, heads=4, mlp_ratio=2.0, window=window,
                           attention_backend="torch").eval()


def _perturb(tokens, frame):
    out = tokens.clone()
    out[:, frame] += torch.randn_like(out[:, frame])
    return out


def test_each_latent_depends_only_on_its_band():
    model = _perceiver(window=1)
    tokens = torch.randn(2, T, P, C)
    with torch.no_grad():
        base = model(tokens)
        assert base.shape == (2, K, C)
        lo, hi = band(K, T, 1)
        for frame in range(T):
            moved = model(_perturb(tokens, frame))
            for i in range(K):
                inside = int(lo[i]) <= frame < int(hi[i])
                changed = (moved[:, i] - base[:, i]).abs().max().item()
                if inside:
                    assert changed > 1e-4, (frame, i)
                else:
                    assert changed < 1e-6, (frame, i)


def test_unbanded_latents_and_teacher_see_every_frame():
    model = _perceiver(window=0)
    tokens = torch.randn(1, T, P, C)
    verbs = torch.randn(1, 3, C)
    with torch.no_grad():
        base_s, base_t = model(tokens, banded=False), model(tokens, queries=verbs)
        assert base_t.shape == (1, 3, C)
        for frame in (0, T // 2, T - 1):
            moved = _perturb(tokens, frame)
            assert ((model(moved, banded=False) - base_s).abs().amax(-1) > 1e-4).all()
            assert ((model(moved, queries=verbs) - base_t).abs().amax(-1) > 1e-4).all()
        # ...while with window=0 the banded student's first latent ignores the last frame.
        assert torch.allclose(model(_perturb(tokens, T - 1))[:, 0], model(tokens)[:, 0], atol=1e-6)


def test_teacher_uses_the_same_weights_and_masks_padded_queries():
    model = _perceiver()
    tokens = torch.randn(2, T, P, C)
    verbs = torch.randn(2, 3, C)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = model(tokens, queries=verbs, query_mask=mask)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    # Queries never attend to each other: a padded query's content does not leak into the real ones.
    other = verbs.clone()
    other[~mask] = 100.0
    assert torch.allclose(model(tokens, queries=other, query_mask=mask), out, atol=1e-6)
    # Same weights: a gradient from the teacher output reaches the shared attention/MLP parameters. A fixed random
    # projection, not out.sum(): the sum of a LayerNorm's output (unit gain, zero bias) is 0 for every input.
    projection = torch.randn(C, generator=torch.Generator().manual_seed(1))
    (out * projection).sum().backward()
    assert model.layers[0].kv_proj.weight.grad.abs().amax() > 1e-4
    assert model.latents.grad is None  # the latents are the student's only


def test_other_clip_lengths_resample_the_temporal_embedding():
    model = _perceiver(num_frames=T)
    out = model(torch.randn(2, 4, P, C))
    assert out.shape == (2, K, C) and torch.isfinite(out).all()
    assert model.latent_position(4).shape == (K, C)


def test_bad_shapes_are_rejected():
    model = _perceiver()
    with pytest.raises(ValueError):
        model(torch.randn(2, T, P, C + 1))
    with pytest.raises(ValueError):
        model(torch.randn(2, T, P, C), queries=torch.randn(3, 2, C))
