"""InternVideo's ViCLIP-B/16 checkpoint as users load it: the (key, shape) table of its state dict, a writer of
files with that layout, and a small reference of its forward maths (written here, not taken from InternVideo).

Derived by reading OpenGVLab/InternVideo (https://github.com/OpenGVLab/InternVideo):

* Data/InternVid/viclip/viclip.py @ccede52, lines 30-74 (the loader of the released weights): ViCLIP holds
  ``vision_encoder`` (clip_joint_b16 at 224 px, kernel_size 1, 8 frames), ``text_encoder`` (clip_text_b16 with
  context_length = max_txt_l = 32, vocab 49408) and a 0-d Parameter ``temp``; it reads
  ``torch.load(path)['model']`` and loads it with a strict ``load_state_dict``, so the file's "model" dict is
  exactly ViCLIP's state dict, nothing more or less.
* Data/InternVid/viclip/viclip_vision.py @3eadcd5: ResidualAttentionBlock (lines 57-83: ``attn`` an
  nn.MultiheadAttention, so in_proj_weight [3C, C] / in_proj_bias / out_proj; ``ln_1``; ``mlp.c_fc`` and
  ``mlp.c_proj`` 4x wide, the QuickGELU and dropouts hold no weights; ``ln_2``), Transformer.resblocks a ModuleList
  (line 90); VisionTransformer (lines 104-134: bias-free Conv3d ``conv1`` with kernel (1, 16, 16),
  ``class_embedding`` [C], ``positional_embedding`` [(224/16)^2 + 1, C], ``temporal_positional_embedding``
  [1, 8, C], ``ln_pre``, ``ln_post``, ``proj`` [C, 512]) and its forward (lines 161-198); clip_joint_b16
  (lines 246-252: width 768, 12 layers, 12 heads, output_dim 512).
* Data/InternVid/viclip/viclip_text.py @73271ba: CLIP_TEXT (lines 81-110: ``transformer.resblocks`` an
  nn.Sequential of the same blocks, ``token_embedding``, ``positional_embedding`` [context_length, W],
  ``ln_final``, ``text_projection`` [W, embed_dim]), its forward (lines 162-175: causal mask, EOT = argmax of the
  ids), clip_text_b16 (lines 178-184: embed_dim 512, width 512, 8 heads, 12 layers).
* InternVideo1/Pretrain/ViCLIP/exp/exp_pretrain_ViCLIP/viclip_base/config.py @e5460da, lines 14-60: the B/16
  pretraining run (8 frames at 224, max_txt_l 32, vision d_model 768, text d_model 512, embed_dim 512), built by
  InternVideo1/Pretrain/ViCLIP/models/viclip.py (lines 28-31: the same vision_encoder / text_encoder / temp).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch
from torch import nn

B16 = dict(width=768, layers=12, heads=12, patch=16, image=224, frames=8, embed=512,
           text_width=512, text_layers=12, text_heads=8, context=32, vocab=49408)


def _block(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.attn.in_proj_weight", (3 * c, c)),
        (f"{prefix}.attn.in_proj_bias", (3 * c,)),
        (f"{prefix}.attn.out_proj.weight", (c, c)),
        (f"{prefix}.attn.out_proj.bias", (c,)),
        (f"{prefix}.ln_1.weight", (c,)),
        (f"{prefix}.ln_1.bias", (c,)),
        (f"{prefix}.mlp.c_fc.weight", (4 * c, c)),
        (f"{prefix}.mlp.c_fc.bias", (4 * c,)),
        (f"{prefix}.mlp.c_proj.weight", (c, 4 * c)),
        (f"{prefix}.mlp.c_proj.bias", (c,)),
        (f"{prefix}.ln_2.weight", (c,)),
        (f"{prefix}.ln_2.bias", (c,)),
    ]


def viclip_b16_layout() -> list[tuple[str, tuple[int, ...]]]:
    """Every (key, shape) of ViCLIP-B/16's state dict, i.e. of ``torch.load(file)['model']`` (303 tensors)."""
    v, t, grid = 768, 512, 224 // 16
    vision = [
        ("vision_encoder.class_embedding", (v,)),
        ("vision_encoder.positional_embedding", (grid * grid + 1, v)),
        ("vision_encoder.temporal_positional_embedding", (1, 8, v)),
        ("vision_encoder.proj", (v, 512)),
        ("vision_encoder.conv1.weight", (v, 3, 1, 16, 16)),
        ("vision_encoder.ln_pre.weight", (v,)),
        ("vision_encoder.ln_pre.bias", (v,)),
        *[kv for i in range(12) for kv in _block(f"vision_encoder.transformer.resblocks.{i}", v)],
        ("vision_encoder.ln_post.weight", (v,)),
        ("vision_encoder.ln_post.bias", (v,)),
    ]
    text = [
        ("text_encoder.positional_embedding", (32, t)),
        ("text_encoder.text_projection", (t, 512)),
        *[kv for i in range(12) for kv in _block(f"text_encoder.transformer.resblocks.{i}", t)],
        ("text_encoder.token_embedding.weight", (49408, t)),
        ("text_encoder.ln_final.weight", (t,)),
        ("text_encoder.ln_final.bias", (t,)),
    ]
    return vision + text + [("temp", ())]


def random_state(layout: list[tuple[str, tuple[int, ...]]], seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors of exactly ``layout``'s shapes (``temp`` a positive temperature, as ViCLIP's 1/100)."""
    gen = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=gen).to(dtype) for key, shape in layout}
    if "temp" in state:
        state["temp"] = (0.005 + 0.01 * torch.rand((), generator=gen)).to(dtype)
    return state


def save_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> None:
    """As InternVideo publishes it: torch.save of {"model": state dict}; a .safetensors path gets the flat dict
    (the format holds tensors only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)


# ---------------------------------------------------------------------------------------------------------------
# A reference of ViCLIP's maths with its module names, so its state_dict() is the layout by construction.


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """Pre-LN block on sequence-first [N, B, C] input, attention by nn.MultiheadAttention as in ViCLIP."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(c, heads)
        self.ln_1 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(c, 4 * c), gelu=_QuickGELU(), c_proj=nn.Linear(4 * c, c)))
        self.ln_2 = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Stack(nn.Module):
    def __init__(self, c: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(c, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class _Vision(nn.Module):
    def __init__(self, width, layers, heads, patch, image, frames, embed):
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((image // patch) ** 2 + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Stack(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed))

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B,T,3,H,W] -> (patch tokens [B,P,T,C] after ln_post, class token @ proj [B,embed])."""
        x = self.conv1(video.transpose(1, 2))  # [B,C,T,g,g]
        b, c, t = x.shape[:3]
        x = x.flatten(3).permute(0, 3, 2, 1)  # [B,P,T,C]: ViCLIP orders tokens patch-major, time inside
        x = x + self.positional_embedding[1:, None] + self.temporal_positional_embedding[0]
        cls = (self.class_embedding + self.positional_embedding[0]).expand(b, 1, c)  # no temporal code on it
        x = self.ln_pre(torch.cat([cls, x.reshape(b, -1, c)], dim=1))
        x = self.ln_post(self.transformer(x.transpose(0, 1)).transpose(0, 1))
        return x[:, 1:].reshape(b, -1, t, c), x[:, 0] @ self.proj


class _Text(nn.Module):
    def __init__(self, width, layers, heads, context, vocab, embed):
        super().__init__()
        self.transformer = _Stack(width, layers, heads)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, context], zero-padded, the end token the largest id of each row -> [B, embed]."""
        n = ids.shape[1]
        causal = torch.full((n, n), float("-inf")).triu(1)
        x = self.token_embedding(ids) + self.positional_embedding
        x = self.ln_final(self.transformer(x.transpose(0, 1), causal).transpose(0, 1))
        return x[torch.arange(len(ids)), ids.argmax(dim=-1)] @ self.text_projection


class ViCLIPReference(nn.Module):
    """ViCLIP's module tree (vision_encoder / text_encoder / temp) at any size; ``B16`` gives ViCLIP-B/16."""

    def __init__(self, width, layers, heads, patch, image, frames, embed, text_width, text_layers, text_heads,
                 context, vocab):
        super().__init__()
        self.vision_encoder = _Vision(width, layers, heads, patch, image, frames, embed)
        self.text_encoder = _Text(text_width, text_layers, text_heads, context, vocab, embed)
        self.temp = nn.Parameter(torch.tensor(0.01))
