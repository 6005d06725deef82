"""Configuration of the data components: SynthKitchen generation, shard reading, decoding and tokenisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from instraction import lexicon
from instraction.config_checks import ConfigError, check_choice, check_range
from instraction.lexicon import SYNTH_OBJECTS, SYNTH_VERBS


@dataclass
class SynthConfig:
    """SynthKitchen: procedurally rendered instructional clips where only motion tells the verbs apart.

    A clip is ``slots * frames_per_slot`` frames; each action spans whole slots (between ``min_action_slots`` and
    ``max_action_slots``), so a uniform sampler taking ``slots`` frames (data.num_frames) sees every action in at
    least ``min_action_slots`` frames (instraction/data/synthetic.py explains the rule).
    """

    num_shards: int = 8
    """Number of {shard:05d}.tar files written."""
    clips_per_shard: int = 128
    """Samples per shard (a whole video counts as one sample and holds several clips)."""
    size: int = 32
    """Rendered canvas side in pixels (small canvas + large motion is what makes it learnable on CPU). Even."""
    fps: int = 8
    """Frame rate of the encoded H.264 video."""
    min_actions: int = 2
    max_actions: int = 4
    """Each clip holds between min_actions and max_actions sequential actions (uniform; distinct verbs)."""
    chatter_fraction: float = 0.1
    """Share of clips whose caption is pure conversational chatter (the curation filter drops them)."""
    whole_video_fraction: float = 0.1
    """Share of samples written as whole videos with several ASR segments (cut into clips at read time)."""
    seed: int = 0
    """Everything is a deterministic function of this seed."""
    slots: int = 8
    """Sample slots per clip: keep equal to data.num_frames (the frames the model samples per clip)."""
    frames_per_slot: int = 2
    """Rendered frames per slot (a clip lasts slots * frames_per_slot / fps seconds: 2 s by default)."""
    min_action_slots: int = 2
    max_action_slots: int = 5
    """Each action spans this many slots, so it is seen in at least min_action_slots sampled frames."""
    clips_per_video: int = 4
    """Consecutive pre-cut clips sharing one source ``video_id`` (and its background), as clips of a real video."""
    max_segments: int = 4
    """A whole video holds 2..max_segments caption segments (one clip each) with idle gaps between them."""
    verbs: list[str] = field(default_factory=lambda: list(SYNTH_VERBS))
    """Verbs rendered (each has its own motion; all in instraction.lexicon.VERBS)."""
    objects: list[str] = field(default_factory=lambda: list(SYNTH_OBJECTS))
    """Objects drawn, independently of the verb (each a distinct shape and colour; all in lexicon.OBJECTS)."""
    nuisance: float = 0.5
    """How often a state some verb drives (split, squashed, particles, flipped) is shown at rest under other
    verbs: higher = single frames say less about the verb."""
    max_caption_words: int = 28
    """Optional caption parts (chatter, fillers) are dropped beyond this; keep <= data.max_text_len - 2 so no
    action is cut off by the tokenizer."""
    crf: int = 12
    """x264 constant rate factor (lower = better quality; 32 px motion needs a low value)."""
    unseen_pairs: float = 0.2
    """Share of the verb-object pairs drawn only in videos of the bench split (compositional generalisation: every
    verb and every object keeps pairs seen in training); 0: every pair everywhere."""
    holdout_fraction: Optional[float] = None
    holdout_seed: Optional[int] = None
    """The bench split those pairs are kept to (instraction.data.split.is_holdout); None: bench.holdout_fraction /
    bench.seed (``Config.synthkitchen()``; a different value is an error)."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.seed", self.seed, 0, None)
        check_range(f"{path}.num_shards", self.num_shards, 1, 99999)
        check_range(f"{path}.clips_per_shard", self.clips_per_shard, 1, 9999)
        check_range(f"{path}.min_actions", self.min_actions, 1, self.max_actions)
        check_range(f"{path}.chatter_fraction", self.chatter_fraction, 0.0, 1.0)
        check_range(f"{path}.whole_video_fraction", self.whole_video_fraction, 0.0, 1.0)
        check_range(f"{path}.nuisance", self.nuisance, 0.0, 1.0)
        check_range(f"{path}.size", self.size, 8, 4096)
        check_range(f"{path}.fps", self.fps, 1, 240)
        check_range(f"{path}.frames_per_slot", self.frames_per_slot, 1, 64)
        check_range(f"{path}.min_action_slots", self.min_action_slots, 1, self.max_action_slots)
        check_range(f"{path}.clips_per_video", self.clips_per_video, 1, None)
        check_range(f"{path}.max_segments", self.max_segments, 2, 64)
        check_range(f"{path}.crf", self.crf, 0, 51)
        check_range(f"{path}.unseen_pairs", self.unseen_pairs, 0.0, 0.5)
        if self.holdout_fraction is not None:
            check_range(f"{path}.holdout_fraction", self.holdout_fraction, 0.0, 1.0)
        if self.size % 2:
            raise ConfigError(f"{path}.size={self.size} must be even (H.264 yuv420p)")
        lo, hi = self.min_action_slots, self.max_action_slots
        if not all(k * lo <= self.slots <= k * hi for k in range(self.min_actions, self.max_actions + 1)):
            raise ConfigError(
                f"{path}: {self.slots} slots cannot hold {self.min_actions}..{self.max_actions} actions of "
                f"{self.min_action_slots}..{self.max_action_slots} slots each")
        bad = [v for v in self.verbs if v not in SYNTH_VERBS or v not in lexicon.VERBS]
        if bad or len(set(self.verbs)) < self.max_actions:
            raise ConfigError(
                f"{path}.verbs: need >= max_actions distinct verbs from {sorted(SYNTH_VERBS)}; bad: {bad}")
        bad = [o for o in self.objects if o not in SYNTH_OBJECTS or o not in lexicon.OBJECTS]
        if bad or not self.objects:
            raise ConfigError(f"{path}.objects: choose from {sorted(SYNTH_OBJECTS)}; bad: {bad}")


@dataclass
class S3Config:
    """Where s3:// shards live. Credentials come from the standard AWS chain and are never logged."""

    endpoint_url: Optional[str] = None
    """Override for S3-compatible stores (MinIO, moto, R2...). Also read from AWS_ENDPOINT_URL."""
    region: Optional[str] = None
    """Region name for the S3 client (None: the standard chain's, e.g. AWS_DEFAULT_REGION)."""
    anon: bool = False
    """Unsigned requests (public buckets); no credentials are looked up."""


@dataclass
class AugmentConfig:
    """Training-time clip augmentation, applied per clip to the uint8 frames in the training workers' collate
    (never to evaluation or the bench). Every frame of a clip gets the same transform, so motion is preserved.
    Mirroring left-right keeps every SynthKitchen verb (and most instructional verbs) what it is; a flip up-down
    or a time reversal would not (lift <-> drop), so neither is offered."""

    hflip: float = 0.0
    """Probability of mirroring a clip left-right."""
    max_shift: int = 0
    """Translate a clip by up to this many pixels in x and y (uniform, edges replicated); 0: off."""
    object_dropout: float = 0.0
    """Probability that a clip's object words become the tokenizer's unknown token in all of its texts (caption,
    hard negatives, verb phrases, MAM input): the verb then has to carry the match on its own, as it must for a
    verb-object pair no training clip shows (README, "Unseen verb-object pairs"). The object words are the last
    word of each verb phrase (verb + object, as SynthKitchen and the curation backends write them)."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.hflip", self.hflip, 0.0, 1.0)
        check_range(f"{path}.max_shift", self.max_shift, 0, None)
        check_range(f"{path}.object_dropout", self.object_dropout, 0.0, 1.0)

    @property
    def enabled(self) -> bool:
        return self.hflip > 0 or self.max_shift > 0


@dataclass
class ConvertConfig:
    """jobs/make_shards.py: HowTo100M-style ``caption.json`` + a folder of videos -> shards at ``data.shards``."""

    captions: str = ""
    """caption.json: {video_id: {"start": [s...], "end": [s...], "text": [str...]}} (HowTo100M's format)."""
    videos: str = ""
    """Folder holding ``<video_id>.mp4`` / ``.webm`` / ``.mkv`` (local or s3://)."""
    samples_per_shard: int = 100
    """Whole-video samples per tar."""
    max_videos: int = 0
    """Convert only the first N videos of caption.json (0: all)."""
    probe: bool = True
    """Open each video with PyAV to read its duration: unreadable videos are counted and left out, and segments
    past the end are clipped or dropped (counted)."""
    overwrite: bool = False
    """Write into a ``data.shards`` location that already holds shards (otherwise the job refuses)."""

    def validate(self, path: str) -> None:
        check_range(f"{path}.samples_per_shard", self.samples_per_shard, 1, None)
        check_range(f"{path}.max_videos", self.max_videos, 0, None)


@dataclass
class DataConfig:
    shards: str = "data/synthkitchen/shards"
    """Raw shards: a directory, a glob or an s3:// URI (video2dataset layout: KEY.mp4, KEY.json, KEY.txt)."""
    annotations: str = "data/synthkitchen/annotations"
    """Annotation table written by jobs/curate.py (one Parquet file per shard)."""
    make_synthetic: Optional[bool] = None
    """Render SynthKitchen into ``shards`` when that location holds no shard: None (unset) only at the embedded
    default's location (configs/default.yaml's data.shards), true at any location, false never."""
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
    """Ray Data actors decoding video (CPU) beside training (streaming; see ``materialize``)."""
    decode_batch_size: int = 16
    """Rows per map_batches call of the decode actors."""
    decode_num_cpus: float = 1.0
    """CPUs reserved per decode actor."""
    read_num_cpus: float = 0.25
    """CPUs reserved per shard-read task (mostly I/O; kept small so reads still run while the decode actors hold
    the cores)."""
    prefetch_batches: int = 2
    """Batches each training worker prefetches (collation runs in Ray's background threads)."""
    shuffle_buffer: int = 0
    """Rows in each training worker's local shuffle buffer (0: none; shard order is always shuffled)."""
    worker_cache: bool = False
    """Each training worker reads its split once into its own memory (numpy rows, not yet collated) and draws every
    epoch as a permutation of them seeded by (run.seed, rank, epoch), collated in the training loop: no Ray Data
    iterator thread runs beside the step, and a resume starts at its batch without reading anything again.
    ``shuffle_buffer`` and ``prefetch_batches`` then do not apply. For splits that fit (SynthKitchen: ~25 MB a
    worker); HowTo100M streams."""
    worker_cache_max_gib: float = 4.0
    """A split larger than this in one worker's cache stops the run with an error instead of exhausting memory."""
    materialize: bool = False
    """Decode the training split once into Ray's object store and iterate that every epoch (data that fits, like
    SynthKitchen); off streams every epoch (HowTo100M). Rows are the same either way. Materialised, each read task
    decodes its own shard (the decode_* actor settings apply to streaming only)."""
    frames: Optional[str] = None
    """The frames store of jobs/extract_frames.py (a directory or s3://): training reads its frames instead of
    decoding video; None decodes (README, "Data feed at paper settings")."""
    frames_quality: int = 95
    """JPEG quality of the frames store (1-100, PIL); 0 stores raw uint8 frames (exact, ~3-6x the bytes)."""
    frames_subsampling: str = "444"
    """JPEG chroma subsampling of the frames store: 444 | 422 | 420 (smaller, more colour error). Written without
    colons: YAML reads 4:4:4 as a base-60 number."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)

    def validate(self, path: str) -> None:
        check_choice(f"{path}.hard_negatives", self.hard_negatives, ["both", "verb_altered", "order_swapped", "none"])
        check_range(f"{path}.num_frames", self.num_frames, 1, 1024)
        check_range(f"{path}.max_verbs", self.max_verbs, 1, 64)
        check_range(f"{path}.decode_concurrency", self.decode_concurrency, 1, 4096)
        check_range(f"{path}.decode_batch_size", self.decode_batch_size, 1, None)
        check_range(f"{path}.read_num_cpus", self.read_num_cpus, 0.0, None)
        check_range(f"{path}.max_negatives", self.max_negatives, 0, 256)
        check_range(f"{path}.prefetch_batches", self.prefetch_batches, 0, 64)
        check_range(f"{path}.shuffle_buffer", self.shuffle_buffer, 0, None)
        check_range(f"{path}.worker_cache_max_gib", self.worker_cache_max_gib, 0.0, None)
        check_range(f"{path}.frames_quality", self.frames_quality, 0, 100)
        check_choice(f"{path}.frames_subsampling", self.frames_subsampling, ["444", "422", "420"])
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"{path}.mean and {path}.std need 3 values each")
