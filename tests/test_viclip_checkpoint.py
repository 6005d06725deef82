"""InternVideo's ViCLIP-B/16 weights as users load them (issue 18, item 4).

A file with exactly the released checkpoint's layout (tests/viclip_layout.py: key names and shapes derived from
InternVideo's ViCLIP code; random values) must load into the paper config (configs/howto100m_viclip_b.yaml)
strictly: no missing, unexpected or resized key, every tensor equal to the file's. A small reference written from
ViCLIP's forward checks that the towers also compute ViCLIP's maths on those names.

Run: python -m pytest tests/test_viclip_checkpoint.py -q   (peak about 2.5 GB of memory; 10-30 s on 2 cores)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from instraction.config import load_config
from instraction.model.backbone import build_text_tower, build_video_tower
from instraction.model.config import PretrainedConfig, TextTowerConfig, VideoTowerConfig
from instraction.model.instraction import build_model
from instraction.model.loaders import CheckpointError, load_pretrained
from viclip_layout import B16, ViCLIPReference, random_state, save_checkpoint, viclip_b16_layout

PAPER = Path(__file__).resolve().parents[1] / "configs" / "howto100m_viclip_b.yaml"
# The paper's tokenizer is CLIP's BPE (49408 ids, ViCLIP's token rows) plus the <mask> HFTokenizer adds
# (instraction/data/tokenizer.py); test_clip_tokenizer_without_mask_gets_one_row_more checks that rule.
PAPER_VOCAB = 49408 + 1


def _towers_state(video, text) -> dict[str, torch.Tensor]:
    """Our towers' tensors under the checkpoint's names."""
    out = {"vision_encoder." + k: v for k, v in video.state_dict().items()}
    out.update({"text_encoder." + k: v for k, v in text.state_dict().items()})
    return out


def test_layout_table_is_viclip_module_tree():
    layout = viclip_b16_layout()
    with torch.device("meta"):
        ref = ViCLIPReference(**B16)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == dict(layout)
    assert len(dict(layout)) == len(layout) == 303
    assert sum(k.startswith("vision_encoder.") for k, _ in layout) == 153
    assert sum(k.startswith("text_encoder.") for k, _ in layout) == 149


def test_paper_config_loads_viclip_b16_checkpoint_exactly(tmp_path):
    layout = viclip_b16_layout()
    state = random_state(layout, seed=0)
    path = tmp_path / "ViCLIP-B_InternVid-FLT-10M.pth"
    save_checkpoint(path, state)
    cfg = load_config(PAPER, [f"model.pretrained.path={path}", "model.pretrained.strict=true"])
    torch.manual_seed(0)
    model = build_model(cfg, PAPER_VOCAB)  # strict: raises on any missing or unexpected key
    report = model.pretrained_report

    assert report["format"] == "viclip" and report["missing"] == [] and report["unexpected"] == []
    assert report["warnings"] == []  # a resized (mis-shaped) tensor would be warned about
    assert report["skipped"] == ["temp"] and report["logit_scale"] == pytest.approx(1 / float(state["temp"]))
    assert report["video"]["loaded"] == 153 and report["text"]["loaded"] == 149
    # The config already is ViCLIP's (no activation switch, projections kept); the one note is the <mask> row.
    assert len(report["notes"]) == 1 and report["notes"][0].startswith("text.token_embedding.weight: rows 49408..49408")

    ours = _towers_state(model.video, model.text)
    shapes = {k: tuple(v.shape) for k, v in ours.items()}
    assert shapes == {**dict(layout[:-1]), "text_encoder.token_embedding.weight": (PAPER_VOCAB, 512)}
    for key, value in ours.items():
        expected = state[key]
        if key == "text_encoder.token_embedding.weight":
            value = value[:49408]
        assert torch.equal(value, expected), key
    mask_row = model.text.token_embedding.weight[49408]
    assert 0 < mask_row.std() < 0.1  # the tower's N(0, 0.02) init, not a file row (those are N(0, 1))
    # ViCLIP's projections start the model's joint-space heads.
    assert torch.equal(model.video_proj.weight, state["vision_encoder.proj"].t())
    assert torch.equal(model.text_proj.weight, state["text_encoder.text_projection"].t())


def test_flat_safetensors_copy_loads_into_the_paper_towers(tmp_path):
    cfg = load_config(PAPER)
    layout = viclip_b16_layout()
    state = random_state(layout, seed=1, dtype=torch.float16)  # half-size copy; the towers cast to theirs
    path = tmp_path / "viclip_b16.safetensors"
    save_checkpoint(path, state)
    video, text = build_video_tower(cfg.model.video), build_text_tower(cfg.model.text, 49408)
    report = load_pretrained(PretrainedConfig(path=str(path), strict=True), video, text)
    assert report["format"] == "viclip" and report["warnings"] == [] and report["notes"] == []
    ours = _towers_state(video, text)
    assert ours.keys() == state.keys() - {"temp"}
    assert all(v.dtype == torch.float32 and torch.equal(v, state[k].float()) for k, v in ours.items())


def test_towers_compute_viclip_maths(tmp_path):
    """Small ViCLIP reference with random weights -> .pth -> our towers: same video and text embeddings, same
    patch tokens (our [B,T,P,C] is ViCLIP's patch-major order transposed)."""
    size = dict(width=32, layers=2, heads=4, patch=4, image=16, frames=3, embed=24, text_width=32, text_layers=2,
                text_heads=4, context=16, vocab=50)
    torch.manual_seed(0)
    ref = ViCLIPReference(**size).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
        for m in ref.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)  # near-unit gains keep the outputs O(1), so the comparison means something
    path = tmp_path / "viclip_small.pth"
    save_checkpoint(path, ref.state_dict())

    video = build_video_tower(VideoTowerConfig(kind="vit", width=32, layers=2, heads=4, patch_size=4, image_size=16,
                                               num_frames=3, output_dim=24)).eval()
    text = build_text_tower(TextTowerConfig(width=32, layers=2, heads=4, context_length=16, output_dim=24), 50).eval()
    report = load_pretrained(PretrainedConfig(path=str(path), strict=True), video, text)
    assert any("quick_gelu" in n for n in report["notes"])  # our gelu default switched to ViCLIP's activation

    clip = torch.randn(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    eot = 49  # ViCLIP pools at argmax(ids): the end token is the largest id
    ids = torch.zeros(2, 16, dtype=torch.long)
    ids[0, :6] = torch.tensor([1, 7, 8, 9, 30, eot])
    ids[1, :3] = torch.tensor([1, 5, eot])
    with torch.no_grad():
        ref_tokens, ref_video = ref.vision_encoder(clip)
        ref_text = ref.text_encoder(ids)
        tokens, pooled = video(clip)
        _, text_pooled = text(ids, ids != 0)
    torch.testing.assert_close(video.project(pooled), ref_video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, ref_tokens.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text.project(text_pooled), ref_text, atol=1e-5, rtol=1e-5)


def test_clip_tokenizer_without_mask_gets_one_row_more(tmp_path):
    """HFTokenizer appends <mask> to CLIP's tokenizer; the loader keeps that one row and refuses any other
    vocabulary difference (another tokenizer)."""
    from transformers import CLIPTokenizer

    from instraction.data.tokenizer import HFTokenizer

    words = ["<|startoftext|>", "<|endoftext|>", "a</w>", "b</w>", "a", "b"]
    (tmp_path / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(tmp_path / "tok")
    tokenizer = HFTokenizer(tmp_path / "tok")
    assert tokenizer.vocab_size == len(words) + 1 and tokenizer.mask_id == len(words)

    rows = torch.randn(len(words), 32)
    path = tmp_path / "viclip_text.pth"
    save_checkpoint(path, {"text_encoder.token_embedding.weight": rows})
    text = build_text_tower(TextTowerConfig(width=32, layers=1, heads=4), tokenizer.vocab_size)
    mask_row = text.token_embedding.weight[-1].detach().clone()
    report = load_pretrained(PretrainedConfig(path=str(path)), None, text)
    weight = text.token_embedding.weight
    assert torch.equal(weight[:-1], rows) and torch.equal(weight[-1], mask_row)
    assert report["warnings"] == [] and any("tokens the tokenizer added" in n for n in report["notes"])
    with pytest.raises(CheckpointError, match="vocabulary"):
        load_pretrained(PretrainedConfig(path=str(path)), None,
                        build_text_tower(TextTowerConfig(width=32, layers=1, heads=4), tokenizer.vocab_size + 1))
