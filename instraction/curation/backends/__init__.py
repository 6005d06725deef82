"""Curation backends behind one interface (``base.Backend``): rules (offline default), hf, openai, vllm.

They share the versioned prompts (``curation.prompts``), the answer parser/validator and the negatives; each
module imports its heavy dependencies (transformers, ray.data.llm) only when built.
"""

from __future__ import annotations

from instraction.curation.backends.base import Backend, EngineUnavailable
from instraction.curation.config import CurationConfig


def make_backend(cfg: CurationConfig) -> Backend:
    """The backend ``cfg.backend`` names."""
    if cfg.backend == "rules":
        from instraction.curation.backends.rules import RulesBackend as cls
    elif cfg.backend == "hf":
        from instraction.curation.backends.hf import HFBackend as cls
    elif cfg.backend == "openai":
        from instraction.curation.backends.openai import OpenAIBackend as cls
    elif cfg.backend == "vllm":
        from instraction.curation.backends.vllm import VLLMBackend as cls
    else:
        raise ValueError(f"unknown curation backend {cfg.backend!r}")
    return cls(cfg)


__all__ = ["Backend", "EngineUnavailable", "make_backend"]
