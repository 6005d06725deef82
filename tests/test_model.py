"""InstrActionModel on the tiny default config: outputs, loss bookkeeping, encoders, decoder, a short fit."""

from pathlib import Path

import pytest
import torch

from instraction.config import load_config
from instraction.model.decoder import MultimodalDecoder
from instraction.model.instraction import LOSS_TERMS, build_model, negative_masks
from instraction.model.testing import MASK_ID, PAD_ID, make_dummy_batch

VOCAB = 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on the shared 2-core machine those threads spin
    against every other process (measured: 8 steps 75 s with the default pool vs 16 s with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(overrides=()):
    cfg = load_config(None, list(overrides))
    torch.manual_seed(0)
    return cfg, build_model(cfg, VOCAB)


def test_dummy_batch_follows_the_batch_contract(tiny_config):
    d = tiny_config.data
    batch = make_dummy_batch(tiny_config, VOCAB, 5)
    b, length, nn_, m, lv = 5, d.max_text_len, d.max_negatives, d.max_verbs, d.max_verb_len
    assert batch["video"].shape == (b, d.num_frames, 3, d.size, d.size) and batch["video"].dtype == torch.float32
    assert batch["text_ids"].shape == batch["text_mask"].shape == batch["mam_ids"].shape == (b, length)
    assert batch["neg_ids"].shape == (b, nn_, length) and batch["neg_mask"].shape == (b, nn_)
    assert batch["verb_ids"].shape == batch["verb_mask"].shape == (b, m, lv)
    assert batch["verb_count"].dtype == torch.long and set(batch["verb_count"].tolist()) >= {0, 1, 2}
    assert all(batch[k].dtype == torch.bool for k in ("text_mask", "neg_mask", "verb_mask"))
    assert (batch["neg_ids"][~batch["neg_mask"]] == PAD_ID).all()  # padding rows are all pad
    labelled = batch["mam_labels"] != -100
    assert labelled.any() and (batch["mam_ids"][labelled] == MASK_ID).all()
    assert torch.equal(batch["mam_labels"][labelled], batch["text_ids"][labelled])


def test_forward_returns_every_term_and_the_weighted_total():
    cfg, model = _model()
    out = model(make_dummy_batch(cfg, VOCAB, 4))
    for key in ("contrastive_loss", "distill_loss", "dtw_loss", "mam_loss", "loss", "logit_scale", "hn_margin",
                "distill_student", "distill_teacher_ce", "dtw_align", "dtw_order", "mam_tokens"):
        assert key in out and out[key].ndim == 0 and torch.isfinite(out[key]), key
    for name in LOSS_TERMS:
        assert out[f"{name}_loss"] > 0, name
    weighted = sum(getattr(cfg.loss, f"{name}_weight") * out[f"{name}_loss"] for name in LOSS_TERMS)
    assert torch.allclose(out["loss"], weighted)
    assert out["logit_scale"].item() == pytest.approx(1 / cfg.model.init_temperature, rel=1e-5)
    assert not out["hn_margin"].requires_grad


def test_zero_weight_terms_are_skipped():
    cfg, model = _model(["loss.mam_weight=0", "loss.distill_weight=0"])
    out = model(make_dummy_batch(cfg, VOCAB, 4))
    assert out["mam_loss"].item() == 0.0 and out["distill_loss"].item() == 0.0
    assert "mam_tokens" not in out and "distill_student" not in out
    out["loss"].backward()
    assert all(p.grad is None for n, p in model.decoder.named_parameters() if not n.startswith("token_embedding"))
    assert model.verb_query.weight.grad is None  # no teacher stream was run


def test_encoders_shapes_and_normalisation(tiny_config):
    _, model = _model()
    model.eval()
    batch = make_dummy_batch(tiny_config, VOCAB, 3)
    e, k, t = tiny_config.model.embed_dim, tiny_config.model.perceiver.num_latents, tiny_config.data.num_frames
    with torch.no_grad():
        video = model.encode_video(batch["video"])
        text = model.encode_text(batch["text_ids"], batch["text_mask"])
        tokens = model.action_tokens(batch["video"])
        frames = model.frame_embeddings(batch["video"])
    assert video.shape == text.shape == (3, e) and tokens.shape == (3, k, e) and frames.shape == (3, t, e)
    for x in (video, text, tokens, frames):
        assert torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5)
    # The retrieval embedding is the (re-normalised) mean of the projected student tokens.
    with torch.no_grad():
        s = model.video_proj(model.perceiver(model.video(batch["video"])[0]))
    assert torch.allclose(video, torch.nn.functional.normalize(s.mean(1), dim=-1), atol=1e-5)


def test_max_pooled_video_embedding_is_used_for_training_and_retrieval(tiny_config):
    _, model = _model(["model.video_pool=max"])
    batch = make_dummy_batch(tiny_config, VOCAB, 3)
    with torch.no_grad():
        s = model.video_proj(model.perceiver(model.video(batch["video"])[0]))
        video = model.encode_video(batch["video"])
    expected = torch.nn.functional.normalize(s.amax(1), dim=-1)
    assert torch.allclose(video, expected, atol=1e-5)
    assert not torch.allclose(video, torch.nn.functional.normalize(s.mean(1), dim=-1), atol=1e-3)
    # The contrastive term sees the same embedding: the pooled max is what gets its gradient.
    _, mean_model = _model()
    with torch.no_grad():
        losses = float(model(batch)["contrastive_loss"]), float(mean_model(batch)["contrastive_loss"])
    assert losses[0] != pytest.approx(losses[1])
    # Only the token holding the max of a dimension receives that dimension's gradient.
    tokens = s.clone().requires_grad_(True)
    model.pool(tokens)[:, 0].sum().backward()
    winners = (tokens.grad[:, :, 0] != 0).sum(1)
    assert winners.tolist() == [1, 1, 1]


def test_a_few_adamw_steps_lower_the_loss(tiny_config):
    _, model = _model()
    batch = make_dummy_batch(tiny_config, VOCAB, 4, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    losses = []
    for _ in range(8):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.75 * losses[0], losses  # ~0.6 measured


def test_decoder_is_causal_ignores_padding_and_reads_the_action_tokens():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 16)
    dec = MultimodalDecoder(emb, context_length=8, cond_width=12, layers=2, heads=4).eval()
    ids = torch.tensor([[1, 5, 6, 7, 2, 0, 0, 0]])
    mask = ids != 0
    cond = torch.randn(1, 3, 12)
    with torch.no_grad():
        base = dec(ids, mask, cond)
        later = ids.clone()
        later[0, 3] = 9
        assert torch.allclose(dec(later, mask, cond)[0, :3], base[0, :3], atol=1e-6)  # causal
        assert not torch.allclose(dec(later, mask, cond)[0, 3], base[0, 3])
        padded = ids.clone()
        padded[0, 6] = 11  # a padding position's id: hidden from every real position
        assert torch.allclose(dec(padded, mask, cond)[0, :5], base[0, :5], atol=1e-6)
        assert not torch.allclose(dec(ids, mask, torch.randn(1, 3, 12))[0, 0], base[0, 0])  # cross-attends to S
    assert dec.token_embedding is emb and dec.lm_head(base).shape == (1, 8, 20)
    assert torch.allclose(dec.lm_head(base), base @ emb.weight.t())


def test_negative_token_masks_from_row_mask_token_mask_and_clip_style_padding():
    text_ids = torch.tensor([[1, 7, 2, 0]])
    text_mask = text_ids != 0
    neg_ids = torch.tensor([[[1, 8, 9, 2], [0, 0, 0, 0]]])
    batch = {"text_ids": text_ids, "text_mask": text_mask, "neg_ids": neg_ids,
             "neg_mask": torch.tensor([[True, False]])}
    tokens, rows = negative_masks(batch)
    assert tokens.tolist() == [[[True, True, True, True], [False] * 4]] and rows.tolist() == [[True, False]]
    batch["neg_mask"] = neg_ids != 0  # a 3-D token mask is taken as is
    tokens, rows = negative_masks(batch)
    assert torch.equal(tokens, neg_ids != 0) and rows.tolist() == [[True, False]]
    # HF CLIP pads with the end token (pad = eos = 9 here): the first pad of a row is its real end token.
    clip = {"text_ids": torch.tensor([[1, 7, 9, 9]]), "text_mask": torch.tensor([[True, True, True, False]]),
            "neg_ids": torch.tensor([[[1, 8, 9, 9], [9, 9, 9, 9]]]), "neg_mask": torch.tensor([[True, False]])}
    tokens, _ = negative_masks(clip)
    assert tokens.tolist() == [[[True, True, True, False], [False] * 4]]


def test_build_model_checks_data_shapes_and_model_code_never_imports_ray_or_deepspeed():
    cfg = load_config(None, ["data.size=64"])
    with pytest.raises(ValueError, match="image_size"):
        build_model(cfg, VOCAB)
    for name in ("perceiver.py", "decoder.py", "instraction.py", "testing.py"):
        source = (ROOT / "instraction" / "model" / name).read_text()
        assert "import ray" not in source and "deepspeed" not in source, name


def test_pretrained_clip_text_space_is_kept_from_step_zero(tmp_path):
    """model.pretrained.path loads the towers and starts text_proj from the checkpoint's text_projection, so
    encode_text equals HF CLIP's normalised text features before any training."""
    from transformers import CLIPConfig, CLIPModel

    vocab, eos = 50, 49
    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                           image_size=16, patch_size=4),
        projection_dim=24,
    )).eval()
    hf.save_pretrained(tmp_path)
    cfg = load_config(None, [f"model.pretrained.path={tmp_path}", "model.embed_dim=24", "model.text.width=32",
                             "model.text.layers=2", "model.text.heads=4", "model.text.context_length=16",
                             "model.text.output_dim=24", "data.max_text_len=16"])
    model = build_model(cfg, vocab).eval()
    assert model.pretrained_report["text"]["loaded"] > 0
    assert torch.equal(model.text_proj.weight, model.text.text_projection.t())
    ids = torch.tensor([[1, 7, 8, 9, eos, 0], [1, 5, eos, 0, 0, 0]])
    with torch.no_grad():
        ours = model.encode_text(ids, ids != 0)
        theirs = hf.get_text_features(input_ids=ids, attention_mask=(ids != 0).long())
        theirs = theirs if torch.is_tensor(theirs) else theirs.pooler_output
    assert torch.allclose(ours, torch.nn.functional.normalize(theirs, dim=-1), atol=1e-5)


def test_one_text_tower_call_gives_the_states_of_one_call_per_length(tiny_config):
    """The GPU layout (captions, negatives and verb phrases padded into one text-tower call) computes the same
    losses and gradients as one call per length (the CPU layout): padding is masked."""
    from instraction.model.instraction import build_model
    from instraction.model.testing import make_dummy_batch

    torch.manual_seed(0)
    model = build_model(tiny_config, 64)
    batch = make_dummy_batch(tiny_config, 64, 6)
    assert batch["verb_ids"].shape[-1] != batch["text_ids"].shape[-1]  # the two layouts really differ
    results = {}
    for share in (False, True):
        model.share_text_call = share
        model.zero_grad()
        out = model(batch)
        g = torch.Generator().manual_seed(1)
        projection = torch.randn(len([k for k in out if k.endswith("_loss")]), generator=g)
        (torch.stack([out[k] for k in sorted(out) if k.endswith("_loss")]) @ projection).backward()
        results[share] = ({k: v.detach() for k, v in out.items()},
                          torch.cat([p.grad.reshape(-1) for p in model.text.parameters() if p.grad is not None]))
    (out_a, grad_a), (out_b, grad_b) = results[False], results[True]
    for key in ("contrastive_loss", "distill_loss", "dtw_loss", "mam_loss"):
        assert torch.allclose(out_a[key], out_b[key], rtol=1e-5, atol=1e-6), key
    assert grad_a.abs().max() > 0
    # float32 rounding of differently shaped matmuls: ~1e-6 of the largest gradient
    assert torch.allclose(grad_a, grad_b, rtol=1e-4, atol=1e-5 * float(grad_a.abs().max()))


def test_bf16_autocast_runs_the_towers_in_bf16_and_every_loss_in_fp32(monkeypatch):
    """train.precision=bf16-mixed on CPU: the towers compute in bf16, while the contrastive, distillation and
    DTW-Align losses see autocast off (their softmaxes and soft-DTW in fp32) and return fp32; the backward reaches
    the fp32 weights; the totals stay close to an fp32 forward of the same batch."""
    cfg, model = _model()
    batch = make_dummy_batch(cfg, VOCAB, 4)
    reference = model(batch)
    autocast_in, tower_dtype = {}, []
    for name, method in (("contrastive_loss", "forward"), ("distill_loss", "terms"), ("dtw_loss", "terms")):
        original = getattr(getattr(model, name), method)

        def spy(*args, _name=name, _original=original, **kwargs):
            autocast_in[_name] = torch.is_autocast_enabled("cpu")
            return _original(*args, **kwargs)

        monkeypatch.setattr(getattr(model, name), method, spy)
    layer = next(m for m in model.video.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)))
    layer.register_forward_hook(lambda mod, args, out: tower_dtype.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert tower_dtype == [torch.bfloat16]
    assert autocast_in == {"contrastive_loss": False, "distill_loss": False, "dtw_loss": False}
    for name in LOSS_TERMS:
        assert out[f"{name}_loss"].item() == pytest.approx(reference[f"{name}_loss"].item(), rel=0.05), name
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_joint_space_projections_stay_fp32_under_autocast():
    """video_proj / text_proj (``JointProjection``) compute in their fp32 weights' dtype under bf16 autocast, where
    an nn.Linear of the same weights returns bf16; without autocast both are the same linear map. The embeddings
    the losses and the bench compare so carry no bf16 rounding of their own."""
    from instraction.model.instraction import JointProjection

    _, model = _model()
    assert isinstance(model.video_proj, JointProjection) and isinstance(model.text_proj, JointProjection)
    x = torch.randn(5, model.video_proj.in_features, generator=torch.Generator().manual_seed(0))
    plain = torch.nn.Linear(model.video_proj.in_features, model.video_proj.out_features, bias=False)
    plain.weight.data.copy_(model.video_proj.weight.data)
    exact = x @ model.video_proj.weight.T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = model.video_proj(x), plain(x)
        from_bf16 = model.video_proj(x.bfloat16())  # a bf16 tower output is taken up into fp32
    assert ours.dtype == torch.float32 and torch.allclose(ours, exact, rtol=1e-6, atol=1e-6)
    assert theirs.dtype == torch.bfloat16 and not torch.allclose(theirs.float(), exact, rtol=1e-6, atol=1e-6)
    assert from_bf16.dtype == torch.float32
    assert torch.allclose(model.video_proj(x), plain(x))
