"""Configuration of the data components: SynthKitchen generation, shard reading, decoding and tokenisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SynthConfig:
    """SynthKitchen: procedurally rendered instructional clips where only motion tells the verbs apart."""

    num_shards: int = 8
    """Number of {shard:05d}.tar files written."""
    clips_per_shard: int = 128
    """Clips per shard."""
    size: int = 32
    """Rendered canvas side in pixels (small canvas + large motion is what makes it learnable on CPU)."""
    fps: int = 8
    """Frame rate of the encoded H.264 video."""
    min_actions: int = 2
    max_actions: int = 4
    """Each clip holds between min_actions and max_actions sequential actions."""
    chatter_fraction: float = 0.1
    """Share of clips whose caption is pure conversational chatter (the curation filter drops them)."""
    whole_video_fraction: float = 0.0
    """Share of samples written as whole videos with several ASR segments (cut into clips at read time)."""
    seed: int = 0
    """Everything is a deterministic function of this seed."""

    def validate(self, path: str) -> None:
        from instraction.config import check_range

        check_range(f"{path}.min_actions", self.min_actions, 1, self.max_actions)
        check_range(f"{path}.chatter_fraction", self.chatter_fraction, 0.0, 1.0)
        check_range(f"{path}.whole_video_fraction", self.whole_video_fraction, 0.0, 1.0)
        check_range(f"{path}.size", self.size, 8, 4096)


@dataclass
class S3Config:
    """Where s3:// shards live. Credentials come from the standard AWS chain and are never logged."""

    endpoint_url: Optional[str] = None
    """Override for S3-compatible stores (MinIO, moto, R2...). Also read from AWS_ENDPOINT_URL."""
    region: Optional[str] = None
    anon: bool = False


@dataclass
class DataConfig:
    shards: str = "data/synthkitchen/shards"
    """Raw shards: a directory, a glob or an s3:// URI (video2dataset layout: KEY.mp4, KEY.json, KEY.txt)."""
    annotations: str = "data/synthkitchen/annotations"
    """Annotation table written by jobs/curate.py (one Parquet file per shard)."""
    make_synthetic: bool = True
    """Render SynthKitchen into ``shards`` when that location holds no shard (the embedded default)."""
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    s3: S3Config = field(default_factory=S3Config)

    num_frames: int = 8
    """T: frames sampled uniformly over each caption's time window."""
    size: int = 32
    """Frames are resized (shorter side) and centre-cropped to size x size."""
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    """Per-channel normalisation (CLIP's statistics by default)."""

    tokenizer: str = "words"
    """'words' (built-in lexicon word tokenizer, no files) or a path to a HF tokenizer / CLIP checkpoint dir."""
    max_text_len: int = 32
    """L: caption and negative token length (with BOS/EOS)."""
    max_verbs: int = 4
    """M: verb phrases kept per clip."""
    max_verb_len: int = 6
    """Lv: tokens per verb phrase."""
    hard_negatives: str = "both"
    """Which curated negatives feed the contrastive loss: both | verb_altered | order_swapped | none."""
    max_negatives: int = 4
    """Nn: hard negatives per clip in a batch (padded, neg_mask marks real ones)."""

    decode_concurrency: int = 1
    """Ray Data actors decoding video (CPU)."""
    decode_batch_size: int = 16
    """Rows per map_batches call of the decode actors."""
    decode_num_cpus: float = 1.0
    """CPUs reserved per decode actor."""

    def validate(self, path: str) -> None:
        from instraction.config import check_choice, check_range

        check_choice(f"{path}.hard_negatives", self.hard_negatives, ["both", "verb_altered", "order_swapped", "none"])
        check_range(f"{path}.num_frames", self.num_frames, 1, 1024)
        check_range(f"{path}.max_verbs", self.max_verbs, 1, 64)
        check_range(f"{path}.decode_concurrency", self.decode_concurrency, 1, 4096)
        if len(self.mean) != 3 or len(self.std) != 3:
            from instraction.config import ConfigError

            raise ConfigError(f"{path}.mean and {path}.std need 3 values each")
