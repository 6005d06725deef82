"""Video and text towers of the video-language backbone (paper Sec. 4: "a video-text backbone").

Two video towers emit the same interface, ``forward(video [B,T,3,H,W]) -> (tokens [B,T,P,C], pooled [B,C])``:

* ``conv3d``: a 3D-conv stem that keeps the time axis to the end (3x3x3 kernels, temporal stride 1). Issue 8
  measured that such a stem learns verb and order cues within minutes of CPU training where a same-size
  space-time transformer did not, so it is the embedded default.
* ``vit``: ViCLIP (InternVideo) — OpenAI CLIP's ViT with a Conv3d (1,p,p) patch embedding, a class token,
  spatial and temporal positional embeddings and joint space-time attention over all T*P tokens. Parameter
  names follow OpenAI CLIP / ViCLIP so checkpoints map by name (see :mod:`instraction.model.loaders`).

The text tower is CLIP's causal transformer: ``forward(ids [B,L], mask [B,L]) -> (states [B,L,C], pooled [B,C])``
with ``pooled`` the final-LN state at the last real token (CLIP's EOT pooling). Projections to the joint space
belong to the model; ``proj`` / ``text_projection`` exist only when ``output_dim > 0`` so a checkpoint's can be
kept, and are applied by ``tower.project(pooled)``, never inside ``forward``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from instraction.model.config import TextTowerConfig, VideoTowerConfig

__all__ = [
    "Conv3dVideoTower",
    "TextTransformer",
    "VisionTransformer",
    "attention",
    "build_text_tower",
    "build_video_tower",
    "set_activation",
]


# ---------------------------------------------------------------------------------------------------------------
# Transformer parts shared by the ViT video tower and the text tower.


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI CLIP (and so ViCLIP) was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r} (gelu | quick_gelu)")


def mlp(width: int, hidden: int, activation: nn.Module) -> nn.Sequential:
    """CLIP's MLP with its submodule names: c_fc -> activation -> c_proj."""
    return nn.Sequential(
        OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", activation), ("c_proj", nn.Linear(hidden, width))])
    )


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample with probability ``p`` during training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` over [B,H,N,D] heads, in fp32 on CPU under autocast or low precision.

    torch's CPU flash-attention backward is ~15x slower in bf16 than in fp32 at these head sizes (17 ms against
    1.2 ms a call, batch 64 of the embedded default), which undid bf16 autocast's gain on the convolutions and
    matmuls; attention is a small share of the FLOPs, so on CPU it runs in fp32 and returns the input dtype.
    On GPUs the bf16 kernels are the fast ones and run as they are (docs/ARCHITECTURE.md, "Precision").
    """
    if q.device.type == "cpu" and (q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                                 is_causal=is_causal)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (in_proj_*, out_proj), batch-first,
    computed by F.scaled_dot_product_attention (flash / memory-efficient kernels where available)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> Tensor:
        """x [B,N,C]; attn_mask bool [B,1,N,N] (True = may attend) or None -> [B,N,C]."""
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.unbind(2)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask, is_causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block of OpenAI CLIP: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str, drop_path: float = 0.0):
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = mlp(width, hidden, make_activation(activation))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> Tensor:
        x = x + self.drop_path(self.attn(self.ln_1(x), attn_mask, is_causal))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` (``resblocks.{i}``), optionally recomputed in backward."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, activation: str,
                 drop_path: float = 0.0, grad_checkpointing: bool = False):
        super().__init__()
        rates = [drop_path * i / max(layers - 1, 1) for i in range(layers)]
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio, activation, r) for r in rates)
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, is_causal, use_reentrant=False)
            else:
                x = block(x, attn_mask, is_causal)
        return x

    def init_weights(self) -> None:
        """OpenAI CLIP's initialisation: residual output projections scaled down by sqrt(2 * layers)."""
        width = self.resblocks[0].ln_1.normalized_shape[0]
        attn_std = width**-0.5
        proj_std = attn_std * (2 * len(self.resblocks)) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)


def set_activation(tower: nn.Module, name: str) -> None:
    """Swap the (parameter-free) MLP activation of every transformer block, e.g. to match a checkpoint."""
    for module in tower.modules():
        if isinstance(module, ResidualAttentionBlock):
            module.mlp.gelu = make_activation(name)
    if hasattr(tower, "activation"):
        tower.activation = name


def _check_video(video: torch.Tensor, image_size: int) -> None:
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be [B,T,3,H,W], got {tuple(video.shape)}")
    if video.shape[-2:] != (image_size, image_size):
        raise ValueError(f"video frames are {tuple(video.shape[-2:])}, the tower expects {image_size}x{image_size}")


def _temporal_embedding(table: torch.Tensor, frames: int) -> torch.Tensor:
    """table [1,T0,C] -> [1,frames,C]: as is for T0 frames, the mean for a single image (ViCLIP's rule), else
    linearly resampled so clips of another length still get an ordered time code."""
    if table.shape[1] == frames:
        return table
    if frames == 1:
        return table.mean(1, keepdim=True)
    return F.interpolate(table.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# Video towers.


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: [B,C,T,H,W] normalised over (C/G, H, W) for each t, so no clip-wide
    statistic leaks across time and a token's receptive field stays the convolutions' +-1 frame per block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.view(b, t, c, h, w).transpose(1, 2)


class Conv3dVideoTower(nn.Module):
    """3D-conv stem: ``layers`` blocks Conv3d(3x3x3, temporal stride 1) -> per-frame GroupNorm -> GELU.

    ``temporal_blocks`` (-1: all) of them mix frames t-1..t+1; the rest are per-frame 1x3x3 (half the cost).

    The first log2(patch_size) blocks halve the spatial grid, so P = (image_size / patch_size)^2 tokens per frame;
    the first block (full resolution, the costliest per channel) is width/2 wide, the rest ``width``. A residual
    per-token MLP (``mlp_ratio``) then mixes channels cheaply. ``norm``: per-frame GroupNorm (statistics per
    sample: no rank synchronisation, eval equals train) or BatchNorm3d (learns motion in fewer steps; running
    statistics at eval, each data-parallel rank its own batch statistics).
    """

    def __init__(self, cfg: VideoTowerConfig):
        super().__init__()
        halvings = cfg.patch_size.bit_length() - 1
        if cfg.patch_size != 1 << halvings or halvings > cfg.layers:
            raise ValueError(f"conv3d tower: patch_size {cfg.patch_size} must be a power of two <= 2**{cfg.layers}")
        self.width, self.image_size, self.num_frames = cfg.width, cfg.image_size, cfg.num_frames
        self.grid = cfg.image_size // cfg.patch_size
        widths = ([max(cfg.width // 2, 8)] if cfg.layers > 1 else []) + [cfg.width] * max(cfg.layers - 1, 1)
        self.frame_differences = cfg.frame_differences
        blocks, c_in = [], 6 if cfg.frame_differences else 3
        temporal = len(widths) if cfg.temporal_blocks < 0 else cfg.temporal_blocks
        for i, c_out in enumerate(widths):
            s, kt = (2 if i < halvings else 1), (3 if i < temporal else 1)
            blocks += [
                nn.Conv3d(c_in, c_out, (kt, 3, 3), stride=(1, s, s), padding=(kt // 2, 1, 1), bias=False),
                FrameGroupNorm(math.gcd(8, c_out), c_out) if cfg.norm == "group" else nn.BatchNorm3d(c_out),
                nn.GELU(),
            ]
            c_in = c_out
        self.stem = nn.Sequential(*blocks)
        # Convolutions are translation-equivariant in time: the embedding tells later layers where a token sits.
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.width))
        hidden = int(round(cfg.width * cfg.mlp_ratio))
        self.ln_mlp = nn.LayerNorm(cfg.width)
        self.mlp = mlp(cfg.width, hidden, nn.GELU())
        self.ln_tokens = nn.LayerNorm(cfg.width)
        self.ln_post = nn.LayerNorm(cfg.width)
        nn.init.normal_(self.temporal_positional_embedding, std=0.02)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B,T,3,H,W] -> tokens [B,T,P,C] (layer-normed), pooled [B,C] = LN(mean of tokens)."""
        _check_video(video, self.image_size)
        t = video.shape[1]
        x = video.transpose(1, 2)  # [B,3,T,H,W]
        if self.frame_differences:  # motion channels x_t - x_(t-1), zero for the first frame
            x = torch.cat([x, torch.cat([torch.zeros_like(x[:, :, :1]), x.diff(dim=2)], dim=2)], dim=1)
        # channels-last: oneDNN's 3D convolutions run faster on it (the tower's forward+backward ~0.88x on a CPU
        # core), and [B,C,T,g,g] in that layout is [B,T,g,g,C] in memory, so the token view below needs no copy
        x = self.stem(x.contiguous(memory_format=torch.channels_last_3d))  # [B,C,T,g,g]
        x = x.flatten(3).permute(0, 2, 3, 1)  # [B,T,P,C]
        x = x + _temporal_embedding(self.temporal_positional_embedding, t).unsqueeze(2)
        x = x + self.mlp(self.ln_mlp(x))
        return self.ln_tokens(x), self.ln_post(x.mean(dim=(1, 2)))


class VisionTransformer(nn.Module):
    """ViCLIP's joint space-time ViT. tokens = ln_post(patch tokens) [B,T,P,C]; pooled = ln_post(class token)."""

    def __init__(self, cfg: VideoTowerConfig):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"vit width {cfg.width} is not a multiple of heads {cfg.heads}")
        c, p = cfg.width, cfg.patch_size
        self.width, self.image_size, self.num_frames, self.patch_size = c, cfg.image_size, cfg.num_frames, p
        self.activation = cfg.activation
        self.grid = cfg.image_size // p
        self.conv1 = nn.Conv3d(3, c, kernel_size=(1, p, p), stride=(1, p, p), bias=False)
        scale = c**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(c))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid**2 + 1, c))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, c))
        self.ln_pre = nn.LayerNorm(c)
        self.transformer = Transformer(c, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.activation, cfg.drop_path,
                                       cfg.grad_checkpointing)
        self.ln_post = nn.LayerNorm(c)
        self.proj = nn.Parameter(scale * torch.randn(c, cfg.output_dim)) if cfg.output_dim > 0 else None
        self.transformer.init_weights()

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B,T,3,H,W] -> tokens [B,T,P,C], pooled [B,C] (class token; ``project`` maps it to output_dim)."""
        _check_video(video, self.image_size)
        b, t = video.shape[:2]
        x = self.conv1(video.transpose(1, 2)).flatten(3).permute(0, 2, 3, 1)  # [B,T,P,C]
        pos = self.positional_embedding.to(x.dtype)
        x = x + pos[1:] + _temporal_embedding(self.temporal_positional_embedding, t).to(x.dtype).unsqueeze(2)
        # Frame-major token order (ViCLIP uses patch-major); full attention is order-invariant, so outputs match.
        cls = (self.class_embedding.to(x.dtype) + pos[0]).expand(b, 1, -1)
        x = self.ln_pre(torch.cat([cls, x.flatten(1, 2)], dim=1))
        x = self.ln_post(self.transformer(x))
        return x[:, 1:].reshape(b, t, self.grid**2, self.width), x[:, 0]

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [B,C] -> [B,output_dim] through the checkpoint's ``proj`` (identity when there is none)."""
        return pooled if self.proj is None else pooled @ self.proj


def build_video_tower(cfg: VideoTowerConfig) -> nn.Module:
    """The video tower ``cfg.kind`` names; ``.width`` is the channel width C of its tokens."""
    if cfg.kind == "conv3d":
        return Conv3dVideoTower(cfg)
    if cfg.kind == "vit":
        return VisionTransformer(cfg)
    raise ValueError(f"unknown video tower kind {cfg.kind!r} (conv3d | vit)")


# ---------------------------------------------------------------------------------------------------------------
# Text tower.


class TextTransformer(nn.Module):
    """CLIP's text transformer: causal self-attention plus the key padding mask, final LN, EOT pooling."""

    def __init__(self, cfg: TextTowerConfig, vocab_size: int):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"text width {cfg.width} is not a multiple of heads {cfg.heads}")
        c = cfg.width
        self.width, self.context_length, self.vocab_size = c, cfg.context_length, vocab_size
        self.activation = cfg.activation
        self.token_embedding = nn.Embedding(vocab_size, c)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, c))
        self.transformer = Transformer(c, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.activation,
                                       grad_checkpointing=cfg.grad_checkpointing)
        self.ln_final = nn.LayerNorm(c)
        self.text_projection = nn.Parameter(torch.empty(c, cfg.output_dim)) if cfg.output_dim > 0 else None
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=c**-0.5)
        self.transformer.init_weights()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids long [B,L], mask bool [B,L] (True = real token; L <= context_length) ->
        states [B,L,C] (after ln_final), pooled [B,C] = state at each row's last real token.

        A token attends to earlier real tokens and to itself (so rows never go empty); states at padding positions
        are finite but meaningless. An all-padding row pools position 0.
        """
        b, n = ids.shape
        if n > self.context_length:
            raise ValueError(f"text length {n} exceeds the tower's context_length {self.context_length}")
        mask = mask.bool()
        x = self.token_embedding(ids) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        if bool(mask.all()):
            x = self.transformer(x, is_causal=True)
        else:
            causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
            eye = torch.eye(n, dtype=torch.bool, device=ids.device)
            allowed = (causal & mask[:, None, None, :]) | eye  # [B,1,L,L]
            x = self.transformer(x, attn_mask=allowed)
        x = self.ln_final(x)
        positions = torch.arange(n, device=ids.device)
        last = torch.where(mask, positions, 0).amax(dim=1)
        return x, x[torch.arange(b, device=ids.device), last]

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [B,C] -> [B,output_dim] through the checkpoint's ``text_projection`` (identity when none)."""
        return pooled if self.text_projection is None else pooled @ self.text_projection


def build_text_tower(cfg: TextTowerConfig, vocab_size: int) -> nn.Module:
    """CLIP-style text tower over ``vocab_size`` ids (``cfg.vocab_size`` wins when set, and must cover it)."""
    if cfg.vocab_size and cfg.vocab_size < vocab_size:
        raise ValueError(f"text.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
    return TextTransformer(cfg, cfg.vocab_size or vocab_size)
