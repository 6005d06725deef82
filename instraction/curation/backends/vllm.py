"""vLLM engines on GPU actors through ray.data.llm (``vLLMEngineProcessorConfig`` + ``build_processor``):
chat templating, tokenisation, the engine with JSON-schema guided decoding (``structured_outputs``), and
detokenisation, each an autoscaling stage between ``curation.min_concurrency`` and ``curation.concurrency``.

``should_continue_on_error`` is on: a request the engine rejects (longer than ``max_model_len``, a bad sampling
parameter) comes back with ``__inference_error__`` and becomes that row's ``engine_error`` instead of failing
the batch. ``preflight`` fails fast when the cluster has too few GPUs or a GPU worker cannot import vLLM,
instead of leaving the actor pool pending forever.

vLLM needs CUDA: on a CPU-only machine this module still builds the processor (tests check the stages and the
pre/postprocess functions) but the engine cannot run.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from instraction.curation import prompts
from instraction.curation.backends.base import Backend, EngineUnavailable, carry, request_messages, run_processor_passes

if TYPE_CHECKING:
    import ray.data

DEFAULT_ENGINE_KWARGS = {
    "enable_prefix_caching": True,  # every request shares the system prompt and few-shot examples
    "max_model_len": 4096,
}


def preprocess(row: dict, *, prompt_version: str, max_tokens: int, temperature: float) -> dict:
    """Row -> chat ``messages`` + ``sampling_params`` with the answer's JSON schema for guided decoding."""
    schema = prompts.get_prompt(prompt_version).schema
    return {
        "messages": request_messages(row, prompt_version),
        "sampling_params": {"temperature": temperature, "max_tokens": max_tokens,
                            "structured_outputs": {"json": schema}},
    }


def postprocess(row: dict) -> dict:
    """Engine output -> the row's input columns + ``raw_output`` (error rows bypass this: see ``_Finish``)."""
    return {**carry(row), "raw_output": str(row.get("generated_text") or ""), "engine_error": ""}


class VLLMBackend(Backend):
    name = "vllm"

    def engine_kwargs(self) -> dict:
        return {**DEFAULT_ENGINE_KWARGS, **self.cfg.engine_kwargs}

    def gpus_per_engine(self) -> int:
        kw = self.engine_kwargs()
        return int(kw.get("tensor_parallel_size", 1)) * int(kw.get("pipeline_parallel_size", 1))

    def preflight(self) -> None:
        import ray

        need = self.gpus_per_engine() * max(1, self.cfg.min_concurrency)
        have = ray.cluster_resources().get("GPU", 0)
        if have < need:
            raise EngineUnavailable(
                f"vllm backend needs {need} GPU(s) (tensor x pipeline parallel x min_concurrency); the Ray cluster "
                f"has {have:g}. Use curation.backend=hf or rules on CPU, or openai against a running server.")
        ref = _check_vllm().options(num_gpus=1, num_cpus=1).remote()
        try:
            error = ray.get(ref, timeout=self.cfg.request_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise EngineUnavailable(f"vllm backend: no GPU worker started within {self.cfg.request_timeout_s:.0f}s")
        if error:
            raise EngineUnavailable(f"vllm backend: vLLM cannot be imported on a GPU worker: {error}")

    def processor_config(self):
        from ray.data.llm import vLLMEngineProcessorConfig

        cfg = self.cfg
        return vLLMEngineProcessorConfig(
            model_source=cfg.model,
            engine_kwargs=self.engine_kwargs(),
            batch_size=cfg.batch_size,
            concurrency=(cfg.min_concurrency, cfg.concurrency),
            accelerator_type=cfg.accelerator_type or None,
            should_continue_on_error=True,
            chat_template_stage=True,
            tokenize_stage=True,
            detokenize_stage=True,
        )

    def build_processor(self):
        from ray.data.llm import build_processor

        cfg = self.cfg
        return build_processor(
            self.processor_config(),
            preprocess=functools.partial(preprocess, prompt_version=cfg.prompt_version,
                                         max_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
            postprocess=postprocess,
        )

    def annotate(self, rows: "ray.data.Dataset") -> "ray.data.Dataset":
        return run_processor_passes(rows, self.build_processor, self.annotator(), self.cfg.max_prompt_chars,
                                    self.cfg.max_retries)


@functools.lru_cache(maxsize=1)
def _check_vllm():
    import ray

    @ray.remote(max_retries=0)
    def check() -> str:
        try:
            import vllm  # noqa: F401

            return ""
        except Exception as err:
            return f"{type(err).__name__}: {err}"

    return check
