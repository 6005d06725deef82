"""Configuration of LLM-assisted curation (paper Sec. 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from instraction.config_checks import ConfigError, check_choice, check_range
from instraction.lexicon import SYNTH_VERBS

BACKENDS = ["rules", "hf", "openai", "vllm"]


@dataclass
class CurationConfig:
    backend: str = "rules"
    """rules (offline, deterministic) | hf (transformers in Ray actors) | openai (any OpenAI-compatible server)
    | vllm (ray.data.llm vLLM engine on GPUs)."""
    model: str = ""
    """Model id or local path for hf / openai / vllm."""
    prompt_version: str = "v1"
    """Version of the prompts in instraction/curation/prompts.py; part of the re-curation skip key."""
    batch_size: int = 64
    """Captions per Ray Data batch."""
    concurrency: int = 1
    """Curation actors: hf model replicas; vllm engines (the max of an autoscaling pool); openai requests in
    flight (one HTTP actor each, a quarter CPU each)."""
    min_concurrency: int = 1
    """Lower bound of the autoscaling pool (vllm / hf)."""
    num_gpus: float = 0.0
    """GPUs per curation actor (hf / vllm)."""
    max_verb_altered: int = 9
    """Verb-altered negatives generated per caption (InstrAct-Semantic needs 9)."""
    max_order_swapped: int = 3
    """Order-swapped negatives generated per caption."""
    max_retries: int = 1
    """Re-asks of an LLM whose output fails the schema, before the row is quarantined."""
    max_new_tokens: int = 256
    """Generation budget per answer (hf / openai / vllm)."""
    temperature: float = 0.0
    """Sampling temperature (0 = greedy)."""
    max_prompt_chars: int = 4000
    """Requests whose messages exceed this many characters are quarantined ('prompt_too_long') instead of sent."""
    negative_verbs: list[str] = field(default_factory=lambda: list(SYNTH_VERBS))
    """Replacement verbs tried first for verb-altered negatives (the dataset's verb set keeps negatives plausible);
    the rest of lexicon.VERBS follows. Always a verb of a different motion class than the one replaced."""
    shards_per_wave: int = 16
    """Shards curated per Ray Data execution: a wave's text rows are materialised (small) so LLM answers that
    fail the schema can be re-asked once; a re-run resumes at shard granularity."""
    hf_dtype: str = "auto"
    """hf: torch dtype of the model (auto | float32 | bfloat16 | float16)."""
    hf_device: str = "auto"
    """hf: 'auto' (cuda when the actor has a GPU), 'cpu' or 'cuda'."""
    accelerator_type: str = ""
    """vllm: Ray accelerator type of the engine actors (e.g. 'H100'); '' for any GPU."""
    http_qps: int = 0
    """openai: request rate limit per actor (0 = none)."""
    request_timeout_s: float = 120.0
    """openai: per-request timeout; also the deadline of the engine pre-flight checks (fail fast, never hang)."""
    max_errored_blocks: int = 0
    """Ray Data blocks allowed to fail per wave (e.g. an HTTP request that keeps timing out); their clips get a
    'quarantined'/'lost_in_backend' row so counts still add up. 0 = any failed block fails the job."""
    base_url: str = ""
    """openai: server URL, e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: name of the environment variable that holds the key (the key itself never enters config)."""
    engine_kwargs: dict = field(default_factory=dict)
    """vllm: extra engine arguments (tensor_parallel_size, max_model_len, ...)."""
    force: bool = False
    """Re-curate shards already curated with the same prompt version and model."""
    seed: int = 0
    """Seed of the negative sampler."""

    def validate(self, path: str) -> None:
        check_choice(f"{path}.backend", self.backend, BACKENDS)
        check_range(f"{path}.max_verb_altered", self.max_verb_altered, 0, 64)
        check_range(f"{path}.max_retries", self.max_retries, 0, 10)
        check_range(f"{path}.max_order_swapped", self.max_order_swapped, 0, 64)
        check_range(f"{path}.batch_size", self.batch_size, 1, 1 << 20)
        check_range(f"{path}.concurrency", self.concurrency, 1, 4096)
        check_range(f"{path}.min_concurrency", self.min_concurrency, 1, self.concurrency)
        check_range(f"{path}.shards_per_wave", self.shards_per_wave, 1, 1 << 20)
        check_range(f"{path}.max_new_tokens", self.max_new_tokens, 1, 1 << 16)
        check_choice(f"{path}.hf_dtype", self.hf_dtype, ["auto", "float32", "bfloat16", "float16"])
        check_choice(f"{path}.hf_device", self.hf_device, ["auto", "cpu", "cuda"])
        if self.backend in ("hf", "vllm") and not self.model:
            raise ConfigError(f"{path}.model is required for backend={self.backend!r} (a local path or model id)")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError(f"{path}.base_url is required for backend='openai' (e.g. http://127.0.0.1:8000/v1)")
