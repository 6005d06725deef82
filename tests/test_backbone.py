"""Backbone towers and checkpoint loaders.

Run: python -m pytest tests/test_backbone.py -x -q

The loader tests prove the key mappings by behaviour, not by names: a tiny HF CLIPModel (built from a CLIPConfig
here, no download) is saved with save_pretrained, loaded into our towers, and our pooled outputs must equal HF's
pooler_output on the same input; a ViCLIP-layout .pth written from our own towers must round-trip exactly.
"""

from __future__ import annotations

import logging

import pytest
import torch

from instraction.model.backbone import build_text_tower, build_video_tower
from instraction.model.config import PretrainedConfig, TextTowerConfig, VideoTowerConfig
from instraction.model.loaders import CheckpointError, load_hf_clip, load_pretrained, load_viclip

VOCAB = 50


def _video(b, t, size, seed=0):
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tiny_vit(**kw):
    base = dict(kind="vit", width=32, layers=2, heads=4, patch_size=4, image_size=16, num_frames=3)
    return VideoTowerConfig(**{**base, **kw})


def _tiny_text(**kw):
    return TextTowerConfig(**{**dict(width=32, layers=2, heads=4, context_length=16), **kw})


# ---------------------------------------------------------------------------------------------------------------
# Towers from scratch.


@pytest.mark.parametrize(
    "cfg",
    [
        VideoTowerConfig(),
        VideoTowerConfig(kind="conv3d", width=40, layers=4, patch_size=8, image_size=24, num_frames=5),
        VideoTowerConfig(kind="conv3d", width=16, layers=1, patch_size=1, image_size=7, num_frames=1),
        _tiny_vit(),
        VideoTowerConfig(kind="vit", width=24, layers=1, heads=3, patch_size=5, image_size=20, num_frames=7),
    ],
    ids=["conv3d-default", "conv3d-odd", "conv3d-stride1", "vit-tiny", "vit-odd"],
)
def test_video_tower_shapes(cfg):
    tower = build_video_tower(cfg)
    tokens, pooled = tower(_video(2, cfg.num_frames, cfg.image_size))
    grid = cfg.image_size // cfg.patch_size
    assert tower.width == cfg.width
    assert tokens.shape == (2, cfg.num_frames, grid * grid, cfg.width)
    assert pooled.shape == (2, cfg.width)
    assert torch.isfinite(tokens).all() and torch.isfinite(pooled).all()


@pytest.mark.parametrize("kind", ["conv3d", "vit"])
def test_video_tower_other_clip_lengths(kind):
    """Clips shorter/longer than num_frames (and single images) reuse the temporal embedding (resampled / mean)."""
    cfg = VideoTowerConfig(kind=kind, num_frames=8) if kind == "conv3d" else _tiny_vit(num_frames=4)
    tower = build_video_tower(cfg)
    for t in (1, 3, 11):
        tokens, pooled = tower(_video(2, t, cfg.image_size))
        assert tokens.shape[1] == t and pooled.shape == (2, cfg.width)


def test_video_tower_rejects_wrong_frame_size():
    tower = build_video_tower(VideoTowerConfig())
    with pytest.raises(ValueError, match="32x32"):
        tower(_video(1, 8, 28))
    with pytest.raises(ValueError, match=r"\[B,T,3,H,W\]"):
        tower(torch.randn(1, 3, 8, 32, 32))


def test_conv3d_default_size_and_time_axis():
    tower = build_video_tower(VideoTowerConfig())
    params = sum(p.numel() for p in tower.parameters())
    assert 150_000 <= params <= 1_000_000, params  # issue 8: a ~0.2-0.6M stem learns fast on CPU
    # Temporal stride 1 with 3x3x3 kernels: changing frame 0 must leave tokens of distant frames untouched
    # before the pooled mean, so per-frame tokens stay temporally localised (what the Action Perceiver needs).
    tower.eval()
    video = _video(1, 8, 32)
    edited = video.clone()
    edited[:, 0] += 1.0
    a, _ = tower(video)
    b, _ = tower(edited)
    assert not torch.allclose(a[:, 0], b[:, 0])
    assert torch.allclose(a[:, 4:], b[:, 4:])  # receptive field of three 3-tap convs is +-3 frames


def test_conv3d_tower_has_no_batch_norm_unless_asked():
    tower = build_video_tower(VideoTowerConfig())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in tower.modules())
    tower = build_video_tower(VideoTowerConfig(norm="batch", width=16, image_size=16, num_frames=4))
    norms = [m for m in tower.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(norms) == 3  # one per conv block
    video = _video(3, 4, 16)
    tower.train()
    _, pooled_train = tower(video)
    assert all(int(m.num_batches_tracked) == 1 for m in norms)  # running statistics updated in training
    tower.eval()
    _, alone = tower(video[:1])
    _, together = tower(video)
    torch.testing.assert_close(alone[0], together[0])  # eval: a clip's embedding does not depend on its batch
    assert not torch.allclose(pooled_train[0], together[0])


def test_conv3d_norm_choice_is_checked():
    from instraction.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.video.norm"):
        load_config(None, ["model.video.norm=layer"])


@pytest.mark.parametrize("temporal_blocks, reach", [(0, 0), (1, 1), (2, 2), (-1, 3)])
def test_conv3d_temporal_blocks_set_the_temporal_receptive_field(temporal_blocks, reach):
    tower = build_video_tower(VideoTowerConfig(temporal_blocks=temporal_blocks, frame_differences=False)).eval()
    kernels = [m.kernel_size[0] for m in tower.modules() if isinstance(m, torch.nn.Conv3d)]
    assert kernels == [3] * reach + [1] * (3 - reach)
    video = _video(1, 8, 32)
    edited = video.clone()
    edited[:, 4] += 1.0
    a, _ = tower(video)
    b, _ = tower(edited)
    changed = [t for t in range(8) if not torch.allclose(a[:, t], b[:, t])]
    assert changed == list(range(4 - reach, 5 + reach))  # frame 4 reaches exactly +-reach frames


def test_conv3d_temporal_blocks_are_checked():
    from instraction.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.video.temporal_blocks"):
        load_config(None, ["model.video.temporal_blocks=7"])


def test_text_tower_shapes_and_pooling_ignores_padding():
    tower = build_text_tower(_tiny_text(), VOCAB).eval()
    ids = torch.tensor([[1, 7, 8, 9, 2, 0, 0, 0], [1, 5, 2, 0, 0, 0, 0, 0]])
    mask = ids != 0
    states, pooled = tower(ids, mask)
    assert tower.width == 32 and tower.token_embedding.num_embeddings == VOCAB
    assert states.shape == (2, 8, 32) and pooled.shape == (2, 32)
    assert torch.equal(pooled, states[[0, 1], [4, 2]])  # the last real token
    # Different padding ids and a longer pad tail change nothing at real positions.
    garbage = ids.masked_fill(~mask, 33)
    long_ids = torch.cat([garbage, torch.full((2, 6), 44)], dim=1)
    long_mask = torch.cat([mask, torch.zeros(2, 6, dtype=torch.bool)], dim=1)
    states2, pooled2 = tower(long_ids, long_mask)
    torch.testing.assert_close(pooled2, pooled)
    torch.testing.assert_close(states2[0, :5], states[0, :5])
    # Unpadded row alone (the is_causal fast path) equals its padded version.
    _, pooled_alone = tower(ids[:1, :5], mask[:1, :5])
    torch.testing.assert_close(pooled_alone, pooled[:1])


def test_text_tower_is_causal_and_handles_empty_rows():
    tower = build_text_tower(_tiny_text(), VOCAB).eval()
    ids = torch.tensor([[1, 7, 8, 9, 2, 0]])
    mask = ids != 0
    edited = ids.clone()
    edited[0, 3] = 11
    s1, _ = tower(ids, mask)
    s2, _ = tower(edited, mask)
    torch.testing.assert_close(s1[0, :3], s2[0, :3])
    assert not torch.allclose(s1[0, 3], s2[0, 3])
    states, pooled = tower(torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 6, dtype=torch.bool))
    assert torch.isfinite(states).all() and torch.isfinite(pooled).all()
    with pytest.raises(ValueError, match="context_length"):
        tower(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.bool))


def test_text_tower_vocab_size_rules():
    assert build_text_tower(_tiny_text(vocab_size=80), VOCAB).token_embedding.num_embeddings == 80
    with pytest.raises(ValueError, match="smaller"):
        build_text_tower(_tiny_text(vocab_size=10), VOCAB)


@pytest.mark.parametrize("which", ["conv3d", "vit", "text"])
def test_optimizer_steps_change_outputs(which):
    torch.manual_seed(0)
    if which == "text":
        tower = build_text_tower(_tiny_text(), VOCAB)
        ids = torch.randint(3, VOCAB, (4, 10))
        inputs = (ids, torch.ones_like(ids, dtype=torch.bool))
    else:
        cfg = VideoTowerConfig(image_size=16, num_frames=4) if which == "conv3d" else _tiny_vit()
        tower = build_video_tower(cfg)
        inputs = (_video(4, cfg.num_frames, cfg.image_size),)
    target = torch.randn(4, tower.width)
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-2)
    with torch.no_grad():
        before = tower(*inputs)[1].clone()
    losses = []
    for _ in range(5):
        states, pooled = tower(*inputs)
        token_mean = states.mean(dim=tuple(range(1, states.ndim - 1)))  # every output feeds the loss
        loss = (pooled - target).pow(2).mean() + (token_mean - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    no_grad = [n for n, p in tower.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert not torch.allclose(tower(*inputs)[1], before)
    assert losses[-1] < losses[0]


def _motion_batch(n, frames, size, gen):
    """A noisy 3x3 square crossing the frame left->right (label 1) or right->left (label 0): both classes show the
    same set of frames, only their order differs, so a static-appearance shortcut scores chance."""
    video = 0.1 * torch.randn(n, frames, 3, size, size, generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    rows = torch.randint(0, size - 3, (n,), generator=gen)
    path = torch.linspace(0, size - 3, frames).round().long()
    for i in range(n):
        xs = path if labels[i] == 1 else path.flip(0)
        for f, x in enumerate(xs.tolist()):
            video[i, f, :, rows[i] : rows[i] + 3, x : x + 3] += 1.0
    return video, labels


def test_conv3d_tower_learns_motion_direction_quickly():
    """Issue 8's reason for the conv3d default: it picks up temporal order within a few dozen CPU steps (~2 s)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    tower = build_video_tower(VideoTowerConfig(width=32, image_size=16, num_frames=6))
    head = torch.nn.Linear(32, 2)
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(50):
        video, labels = _motion_batch(32, 6, 16, gen)
        loss = torch.nn.functional.cross_entropy(head(tower(video)[1]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    video, labels = _motion_batch(256, 6, 16, torch.Generator().manual_seed(99))
    with torch.no_grad():
        accuracy = (head(tower(video)[1]).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("cfg", [VideoTowerConfig(), _tiny_vit()], ids=["conv3d", "vit"])
def test_from_scratch_is_deterministic_with_a_seed(cfg):
    def build(seed):
        torch.manual_seed(seed)
        return build_video_tower(cfg).state_dict(), build_text_tower(_tiny_text(), VOCAB).state_dict()

    (v1, t1), (v2, t2), (v3, _) = build(3), build(3), build(4)
    assert all(torch.equal(v1[k], v2[k]) for k in v1) and all(torch.equal(t1[k], t2[k]) for k in t1)
    assert not all(torch.equal(v1[k], v3[k]) for k in v1)


def test_grad_checkpointing_matches_plain_backward():
    torch.manual_seed(0)
    plain = build_video_tower(_tiny_vit())
    ckpt = build_video_tower(_tiny_vit(grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    video = _video(2, 3, 16)
    # Fixed random projections of the outputs: through ln_post, pooled.sum() and tokens.square().mean() are
    # (nearly) constant, which left every gradient before ln_post at rounding noise, equal whatever the tower did.
    gen = torch.Generator().manual_seed(1)
    w_tokens, w_pooled = torch.randn(plain.width, generator=gen), torch.randn(plain.width, generator=gen)
    for tower in (plain, ckpt):
        tokens, pooled = tower(video)
        ((tokens * w_tokens).mean() + (pooled * w_pooled).sum()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert a.grad.abs().amax() > 1e-4, name  # a gradient worth comparing reaches every parameter
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    tower = build_video_tower(_tiny_vit(drop_path=0.5, layers=4))
    video = _video(8, 3, 16)
    tower.eval()
    torch.testing.assert_close(tower(video)[1], tower(video)[1])
    tower.train()
    torch.manual_seed(1)
    a = tower(video)[1]
    torch.manual_seed(2)
    assert not torch.allclose(a, tower(video)[1])


def test_viclip_b16_preset_size():
    with torch.device("meta"):
        video = build_video_tower(VideoTowerConfig.viclip_b16())
        text = build_text_tower(TextTowerConfig.viclip_b16(), 49408)
        tokens, pooled = video(torch.empty(2, 8, 3, 224, 224))
    assert tokens.shape == (2, 8, 196, 768) and pooled.shape == (2, 768)
    n_video = sum(p.numel() for p in video.parameters())
    n_text = sum(p.numel() for p in text.parameters())
    # OpenAI CLIP ViT-B/16: 86.2M visual (with proj) + 8x768 temporal embedding; 63.4M text (+ 32-token positions).
    assert 86.0e6 < n_video < 86.4e6, n_video
    assert 63.0e6 < n_text < 63.5e6, n_text


def test_config_validation():
    from instraction.config import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        VideoTowerConfig(patch_size=6, image_size=36).validate("model.video")
    with pytest.raises(ConfigError, match="log2"):
        VideoTowerConfig(patch_size=16, layers=3).validate("model.video")
    with pytest.raises(ConfigError, match="activation"):
        TextTowerConfig(activation="relu").validate("model.text")
    VideoTowerConfig.viclip_b16().validate("model.video")


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint loaders.

EOS = VOCAB - 1


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A tiny random HF CLIPModel saved with save_pretrained (config.json + model.safetensors)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=EOS),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4),
        projection_dim=24,
    )
    model = CLIPModel(config).eval()
    path = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(path)
    return path, model


def _hf_text_batch():
    ids = torch.tensor([[1, 7, 8, 9, 30, EOS, 0, 0], [1, 5, EOS, 0, 0, 0, 0, 0]])
    return ids, ids != 0


def test_hf_clip_mapping_is_exact_and_outputs_match_hf(hf_clip_dir):
    path, hf = hf_clip_dir
    torch.manual_seed(1)
    video = build_video_tower(_tiny_vit(output_dim=24)).eval()  # gelu: the loader must switch to quick_gelu
    text = build_text_tower(_tiny_text(output_dim=24), VOCAB).eval()
    report = load_hf_clip(path, video, text)

    assert report["format"] == "hf_clip" and report["missing"] == [] and report["unexpected"] == []
    assert report["logit_scale"] == pytest.approx(float(hf.logit_scale.detach().exp()))
    assert any("quick_gelu" in n for n in report["notes"]) and video.activation == text.activation == "quick_gelu"
    sd = hf.state_dict()
    tv, vv = "text_model.encoder.layers.1.self_attn.", "vision_model.encoder.layers.0.self_attn."
    assert torch.equal(text.transformer.resblocks[1].attn.in_proj_weight,
                       torch.cat([sd[tv + "q_proj.weight"], sd[tv + "k_proj.weight"], sd[tv + "v_proj.weight"]]))
    assert torch.equal(video.transformer.resblocks[0].attn.in_proj_bias,
                       torch.cat([sd[vv + "q_proj.bias"], sd[vv + "k_proj.bias"], sd[vv + "v_proj.bias"]]))
    assert torch.equal(video.conv1.weight[:, :, 0], sd["vision_model.embeddings.patch_embedding.weight"])
    assert torch.equal(video.positional_embedding, sd["vision_model.embeddings.position_embedding.weight"])
    assert torch.equal(video.proj, sd["visual_projection.weight"].t())
    assert torch.equal(text.text_projection, sd["text_projection.weight"].t())
    assert torch.equal(text.token_embedding.weight, sd["text_model.embeddings.token_embedding.weight"])
    assert torch.equal(video.temporal_positional_embedding, torch.zeros_like(video.temporal_positional_embedding))

    ids, mask = _hf_text_batch()
    with torch.no_grad():
        hf_text = hf.text_model(input_ids=ids, attention_mask=mask.long())
        states, pooled = text(ids, mask)
        torch.testing.assert_close(pooled, hf_text.pooler_output, atol=1e-5, rtol=1e-5)
        hf_projected = hf.text_projection(hf_text.pooler_output)
        torch.testing.assert_close(text.project(pooled), hf_projected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(states[0, :6], hf.text_model.final_layer_norm(hf_text.last_hidden_state)[0, :6],
                                   atol=1e-5, rtol=1e-5)
        image = _video(2, 1, 16)
        hf_vision = hf.vision_model(pixel_values=image[:, 0])
        tokens, pooled = video(image)
        torch.testing.assert_close(pooled, hf_vision.pooler_output, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tokens[:, 0], hf.vision_model.post_layernorm(hf_vision.last_hidden_state[:, 1:]),
                                   atol=1e-5, rtol=1e-5)


def test_hf_clip_resizes_positions_with_warnings(hf_clip_dir):
    path, hf = hf_clip_dir
    video = build_video_tower(_tiny_vit(image_size=24))  # 6x6 grid vs the checkpoint's 4x4
    text = build_text_tower(_tiny_text(context_length=10), VOCAB)  # truncate 16 -> 10
    report = load_hf_clip(path, video, text)
    assert any(w.startswith("video.positional_embedding: resized (17, 32) -> (37, 32)") for w in report["warnings"])
    assert any(w.startswith("text.positional_embedding: resized (16, 32) -> (10, 32)") for w in report["warnings"])
    sd = hf.state_dict()
    assert torch.equal(text.positional_embedding, sd["text_model.embeddings.position_embedding.weight"][:10])
    assert torch.equal(video.positional_embedding[0], sd["vision_model.embeddings.position_embedding.weight"][0])
    # Checkpoint projections without a place in output_dim=0 towers are skipped and said so, not "unexpected".
    assert "visual_projection.weight" in report["skipped"] and report["unexpected"] == []
    tokens, _ = video(_video(1, 2, 24))
    assert tokens.shape == (1, 2, 36, 32)


def test_hf_clip_shape_mismatch_names_the_key(hf_clip_dir):
    path, _ = hf_clip_dir
    with pytest.raises(CheckpointError, match=r"text_model\.embeddings\.token_embedding\.weight.*vocabulary"):
        load_hf_clip(path, None, build_text_tower(_tiny_text(), VOCAB + 5))
    with pytest.raises(CheckpointError, match=r"mlp\.fc1\.(weight|bias)"):
        load_hf_clip(path, build_video_tower(_tiny_vit(mlp_ratio=3.0)), None)
    with pytest.raises(CheckpointError, match="attention heads"):
        load_hf_clip(path, build_video_tower(_tiny_vit(heads=2)), None)


def test_hf_clip_into_conv3d_tower_loads_text_and_reports_the_rest(hf_clip_dir, caplog):
    path, hf = hf_clip_dir
    video = build_video_tower(VideoTowerConfig())
    before = {k: v.clone() for k, v in video.state_dict().items()}
    text = build_text_tower(_tiny_text(layers=1), VOCAB)  # checkpoint has 2 layers: layer 1 is unexpected
    with caplog.at_level(logging.WARNING):
        report = load_hf_clip(path, video, text)
    assert all(torch.equal(before[k], v) for k, v in video.state_dict().items())
    assert report["video"]["loaded"] == 0 and any("conv3d" in w for w in report["warnings"])
    assert "vision_model.embeddings.class_embedding" in report["skipped"]
    assert "text_model.encoder.layers.1.mlp.fc1.weight" in report["unexpected"]
    assert report["text"]["loaded"] > 0 and "unexpected key" in caplog.text
    with pytest.raises(CheckpointError, match="strict"):
        load_pretrained(PretrainedConfig(path=str(path), strict=True), video, text)


def _viclip_state(video, text, temp=0.01):
    state = {"vision_encoder." + k: v.clone() for k, v in video.state_dict().items()}
    state.update({"text_encoder." + k: v.clone() for k, v in text.state_dict().items()})
    state["temp"] = torch.tensor(temp)
    return {"model": state}


def test_viclip_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    vcfg, tcfg = _tiny_vit(activation="quick_gelu", output_dim=24), _tiny_text(activation="quick_gelu", output_dim=24)
    src_video, src_text = build_video_tower(vcfg).eval(), build_text_tower(tcfg, VOCAB).eval()
    with torch.no_grad():
        src_video.temporal_positional_embedding.normal_()  # nonzero, so the round trip covers it
    path = tmp_path / "viclip.pth"
    torch.save(_viclip_state(src_video, src_text), path)

    torch.manual_seed(1)
    video, text = build_video_tower(vcfg).eval(), build_text_tower(tcfg, VOCAB).eval()
    report = load_pretrained(PretrainedConfig(path=str(path), freeze_text=True), video, text)
    assert report["format"] == "viclip" and report["missing"] == [] and report["unexpected"] == []
    assert report["logit_scale"] == pytest.approx(100.0) and report["frozen"] == ["text"]
    assert not any(p.requires_grad for p in text.parameters()) and all(p.requires_grad for p in video.parameters())
    for src, dst in ((src_video, video), (src_text, text)):
        a, b = src.state_dict(), dst.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids, mask = _hf_text_batch()
    clip = _video(2, 3, 16)
    with torch.no_grad():
        assert torch.equal(text(ids, mask)[1], src_text(ids, mask)[1])
        assert torch.equal(video(clip)[0], src_video(clip)[0])


def test_viclip_temporal_embedding_resampled_and_unknown_keys_reported(tmp_path):
    torch.manual_seed(0)
    src_video = build_video_tower(_tiny_vit(num_frames=8, activation="quick_gelu"))
    src_text = build_text_tower(_tiny_text(activation="quick_gelu"), VOCAB)
    state = _viclip_state(src_video, src_text)
    state["model"]["extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "viclip.pt"
    torch.save(state, path)
    video = build_video_tower(_tiny_vit(num_frames=4, activation="quick_gelu"))
    report = load_viclip(path, video, None)
    assert any(w.startswith("video.temporal_positional_embedding: resized (1, 8, 32) -> (1, 4, 32)")
               for w in report["warnings"])
    assert report["unexpected"] == ["extra_head.weight"]
    assert report["text"]["loaded"] == 0 and "text_encoder.ln_final.weight" in report["skipped"]
    src = src_video.temporal_positional_embedding
    torch.testing.assert_close(video.temporal_positional_embedding[:, [0, -1]], src[:, [0, -1]])


def test_load_pretrained_without_path_and_bad_paths(tmp_path):
    video, text = build_video_tower(VideoTowerConfig()), build_text_tower(_tiny_text(), VOCAB)
    assert load_pretrained(PretrainedConfig(), video, text)["format"] is None
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(PretrainedConfig(path=str(tmp_path / "nope.pth")), video, text)
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="cannot tell the format"):
        load_pretrained(PretrainedConfig(path=str(tmp_path / "weights.npz")), video, text)


def test_conv3d_tower_runs_channels_last_with_the_same_outputs_and_gradients():
    """The stem runs on channels-last input (faster oneDNN convolutions): tokens, pooled output and every gradient
    match the same tower run on the default layout."""
    torch.manual_seed(0)
    tower = build_video_tower(VideoTowerConfig(norm="batch", frame_differences=True))
    video = _video(3, 8, 32)
    with torch.no_grad():
        tokens, pooled = tower(video)
    r_tokens, r_pooled = torch.randn_like(tokens), torch.randn_like(pooled)  # fixed projections: real gradients

    def run():
        tower.zero_grad()
        tokens, pooled = tower(video)
        ((tokens * r_tokens).sum() + (pooled * r_pooled).sum()).backward()
        return tokens.detach(), pooled.detach(), [p.grad.clone() for p in tower.parameters()]

    fast = run()
    stem_forward = tower.stem.forward
    tower.stem.forward = lambda x: stem_forward(x.contiguous())  # the layout the tower had before
    plain = run()
    tower.stem.forward = stem_forward
    for a, b in zip(fast[:2] + tuple(fast[2]), plain[:2] + tuple(plain[2])):
        assert (a - b).norm() <= 1e-4 * b.norm()  # summation order differs: fp32 rounding only


@pytest.mark.parametrize("mask", [False, True])
def test_attention_under_cpu_autocast_computes_in_fp32(mask):
    """Under CPU bf16 autocast the attention product runs on fp32 copies and returns bf16 (torch's bf16 CPU
    flash-attention backward was ~15x slower than fp32's): the result is the fp32 attention rounded once, not the
    bf16 kernel's, and gradients reach the bf16 inputs."""
    from instraction.model.backbone import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, generator=g).bfloat16().requires_grad_() for _ in range(3))
    allowed = torch.rand(3, 1, 7, 7, generator=g) > 0.3 if mask else None
    if mask:
        allowed[..., 0] = True  # every query sees a key
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, allowed)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected.bfloat16())
    out.float().square().sum().backward()
    assert all(x.grad is not None and x.grad.dtype == torch.bfloat16 and x.grad.abs().sum() > 0 for x in (q, k, v))
    plain = attention(q.detach().float(), k.detach().float(), v.detach().float(), allowed)  # no autocast: as SDPA
    assert plain.dtype == torch.float32 and torch.equal(plain, expected.detach())
    wide = attention(q.detach().double(), k.detach().double(), v.detach().double(), allowed)  # never narrowed
    assert wide.dtype == torch.float64 and torch.allclose(wide, expected.detach().double(), atol=1e-6)
