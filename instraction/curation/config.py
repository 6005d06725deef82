"""Configuration of LLM-assisted curation (paper Sec. 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

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
    """Curation actors (an int, or the max of an autoscaling pool for vllm)."""
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
    temperature: float = 0.0
    max_prompt_chars: int = 4000
    """Longer captions are quarantined ('prompt_too_long') instead of sent."""
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
        from instraction.config import check_choice, check_range

        check_choice(f"{path}.backend", self.backend, BACKENDS)
        check_range(f"{path}.max_verb_altered", self.max_verb_altered, 0, 64)
        check_range(f"{path}.max_retries", self.max_retries, 0, 10)
