"""Configuration of the InstrAction model: backbone towers, Action Perceiver, MAM decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from instraction.config_checks import ConfigError, check_choice

VIDEO_TOWERS = ["conv3d", "vit"]
VIDEO_POOLS = ["mean", "max"]
ACTIVATIONS = ["gelu", "quick_gelu"]


@dataclass
class VideoTowerConfig:
    kind: str = "conv3d"
    """conv3d: fast-learning 3D-conv stem that keeps the time axis (tiny default);
    vit: ViCLIP-style joint space-time transformer (Conv3d (1,p,p) patches), tiny to B/16."""
    width: int = 64
    """Channel width C of the emitted tokens [B,T,P,C]."""
    layers: int = 3
    """conv3d: 3D conv blocks; vit: transformer blocks."""
    heads: int = 4
    patch_size: int = 4
    """vit: spatial patch side; conv3d: total spatial stride."""
    image_size: int = 32
    num_frames: int = 8
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    """vit: stochastic-depth rate, rising linearly to this value over the blocks."""
    activation: str = "gelu"
    """vit MLP activation: gelu | quick_gelu (OpenAI CLIP / ViCLIP; a loader switches to the checkpoint's)."""
    output_dim: int = 0
    """vit: >0 adds CLIP's ``proj`` [width, output_dim] (kept for checkpoints; ``tower.project(pooled)``)."""
    grad_checkpointing: bool = False
    """vit: recompute each block in backward (torch.utils.checkpoint) to save activation memory."""
    norm: str = "group"
    """conv3d normalisation after each conv: group (GroupNorm per frame, eval equals train) | batch (BatchNorm3d,
    statistics per data-parallel rank, running ones at eval)."""
    temporal_blocks: int = -1
    """conv3d: how many of the first conv blocks mix time (3x3x3 kernels); the rest are per-frame 1x3x3. -1: every
    block."""
    frame_differences: bool = False
    """conv3d: also feed the frame differences x_t - x_(t-1) (0 at t = 0) as 3 extra input channels (TSN's RGB
    diff). Ignored by vit."""

    @classmethod
    def viclip_b16(cls, num_frames: int = 8) -> "VideoTowerConfig":
        """InternVideo ViCLIP-B/16: OpenAI-CLIP ViT-B/16 with joint space-time attention over 8 frames."""
        return cls(kind="vit", width=768, layers=12, heads=12, patch_size=16, image_size=224,
                   num_frames=num_frames, activation="quick_gelu", output_dim=512)

    def validate(self, path: str) -> None:
        check_choice(f"{path}.kind", self.kind, VIDEO_TOWERS)
        check_choice(f"{path}.activation", self.activation, ACTIVATIONS)
        check_choice(f"{path}.norm", self.norm, ["group", "batch"])
        if self.image_size % self.patch_size:
            raise ConfigError(f"{path}.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.kind == "vit" and self.width % self.heads:
            raise ConfigError(f"{path}.width={self.width} is not a multiple of heads={self.heads}")
        if self.kind == "conv3d":
            halvings = self.patch_size.bit_length() - 1
            if self.patch_size != 1 << halvings:
                raise ConfigError(f"{path}.patch_size={self.patch_size} must be a power of two for kind=conv3d")
            if halvings > self.layers:
                raise ConfigError(f"{path}.layers={self.layers} < log2(patch_size)={halvings} strided blocks (conv3d)")
            if not -1 <= self.temporal_blocks <= self.layers:
                raise ConfigError(f"{path}.temporal_blocks={self.temporal_blocks} must be -1 (all) or 0..layers="
                                  f"{self.layers}")


@dataclass
class TextTowerConfig:
    width: int = 64
    layers: int = 2
    heads: int = 4
    context_length: int = 32
    """Longest token sequence (positional embeddings)."""
    vocab_size: int = 0
    """0: taken from the tokenizer at build time."""
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    """MLP activation: gelu | quick_gelu (OpenAI CLIP / ViCLIP; a loader switches to the checkpoint's)."""
    output_dim: int = 0
    """>0 adds CLIP's ``text_projection`` [width, output_dim] (kept for checkpoints; ``tower.project(pooled)``)."""
    grad_checkpointing: bool = False
    """Recompute each block in backward to save activation memory."""

    @classmethod
    def viclip_b16(cls) -> "TextTowerConfig":
        """ViCLIP-B/16 text encoder: OpenAI CLIP's 12-layer 512-wide causal transformer, 32 tokens."""
        return cls(width=512, layers=12, heads=8, context_length=32, vocab_size=49408,
                   activation="quick_gelu", output_dim=512)

    def validate(self, path: str) -> None:
        check_choice(f"{path}.activation", self.activation, ACTIVATIONS)
        if self.width % self.heads:
            raise ConfigError(f"{path}.width={self.width} is not a multiple of heads={self.heads}")


@dataclass
class PerceiverConfig:
    """Action Perceiver (Sec. 4.1): K latents cross-attend to the video tokens within a temporal band."""

    num_latents: int = 8
    """K: action tokens per clip."""
    window: int = 1
    """Frames of slack on each side of a latent's own temporal span (docs/ARCHITECTURE.md, the band)."""
    layers: int = 1
    heads: int = 4
    mlp_ratio: float = 4.0
    attention_backend: str = "auto"
    """kernels.banded_cross_attention backend: auto | torch | triton."""


@dataclass
class DecoderConfig:
    """MAM multimodal decoder (Sec. 4.3): causal self-attention then cross-attention to the action tokens."""

    layers: int = 1
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class PretrainedConfig:
    path: Optional[str] = None
    """A HF CLIP checkpoint directory or a ViCLIP .pth file; None trains from scratch."""
    format: str = "auto"
    """auto | hf_clip | viclip."""
    freeze_text: bool = False
    """Stop gradients into the loaded text tower (requires_grad False)."""
    freeze_video: bool = False
    """Stop gradients into the loaded video tower."""
    strict: bool = False
    """Raise on missing or unexpected keys too (shape mismatches always raise; both are always reported)."""


@dataclass
class ModelConfig:
    embed_dim: int = 64
    """Joint video-text embedding size."""
    video: VideoTowerConfig = field(default_factory=VideoTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    video_pool: str = "mean"
    """How the K projected student action tokens become the clip embedding: mean (the paper's average) | max
    (per-dimension max over tokens: an action seen by one latent is not diluted by the others)."""
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    """The learnable temperature is clamped so that 1/T <= max_logit_scale (CLIP)."""

    def validate(self, path: str) -> None:
        check_choice(f"{path}.video_pool", self.video_pool, VIDEO_POOLS)
        check_choice(f"{path}.pretrained.format", self.pretrained.format, ["auto", "hf_clip", "viclip"])
        if (self.pretrained.freeze_text or self.pretrained.freeze_video) and not self.pretrained.path:
            raise ConfigError(f"{path}.pretrained.freeze_* needs {path}.pretrained.path (freezing random weights)")
        check_choice(f"{path}.perceiver.attention_backend", self.perceiver.attention_backend, ["auto", "torch", "triton"])
