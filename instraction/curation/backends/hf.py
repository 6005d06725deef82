"""transformers generation in a Ray Data actor pool (CPU or GPU), sharing prompts, parser and negatives.

Each actor loads the tokenizer and model once (``curation.model``: a local directory or a hub id already in the
cache; nothing is downloaded), then per batch: pre-send guards (read errors, prompts over
``curation.max_prompt_chars`` characters or over the model's context) -> one left-padded batched ``generate``
-> parse -> one batched re-ask of the answers that failed the schema -> quarantine of what still fails, raw text
kept. If the batched ``generate`` raises (one pathological row, OOM), the batch is retried row by row and only
the rows that fail again are quarantined (``engine_error``): one bad row never kills a batch.

No JSON-schema constrained decoding here (transformers has none built in): the shared validator and the re-ask
do that job; vLLM and OpenAI-compatible servers constrain decoding.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa

from instraction.curation import prompts
from instraction.curation.backends.base import RETRY_COLUMN, Annotator, Backend, EngineUnavailable, to_table
from instraction.curation.config import CurationConfig

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

_PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
"""Used only when a tokenizer has no chat template of its own."""


def load_model(model: str, dtype: str = "auto", device: str = "auto"):
    """(tokenizer, model, device) for generation; tokenizer left-padded, pad token set. Local files only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _PLAIN_TEMPLATE
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, local_files_only=True).to(device).eval()
    return tokenizer, lm, device


class Generator:
    """Chat messages -> generated text with one HF causal LM (also the raw baseline of the benchmark)."""

    def __init__(self, model: str, max_new_tokens: int, temperature: float = 0.0, dtype: str = "auto",
                 device: str = "auto"):
        self.tokenizer, self.model, self.device = load_model(model, dtype, device)
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        limit = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        self.max_prompt_tokens = max(1, int(limit) - max_new_tokens)

    def encode(self, messages: Sequence[list[dict]]) -> list[list[int]]:
        texts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def generate_ids(self, ids: Sequence[list[int]]) -> list[str]:
        """One batched greedy (or sampled) ``generate`` over token id lists; returns the new text of each."""
        import torch

        enc = self.tokenizer.pad({"input_ids": list(ids)}, padding=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        sample = self.temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=sample,
                temperature=self.temperature if sample else None, top_p=None, top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def generate_safe(self, ids: Sequence[list[int]]) -> list[tuple[str, str]]:
        """(text, error) per row: batched, falling back to one row at a time when the batch fails."""
        if not ids:
            return []
        try:
            return [(t, "") for t in self.generate_ids(ids)]
        except Exception as err:
            log.warning("batched generate failed (%s: %s); retrying row by row", type(err).__name__, err)
        out = []
        for row in ids:
            try:
                out.append((self.generate_ids([row])[0], ""))
            except Exception as err:
                out.append(("", f"{type(err).__name__}: {err}"))
        return out


class HFStage:
    """Ray Data actor: text rows -> annotation rows. ``generator`` defaults to the configured model."""

    def __init__(self, cfg: CurationConfig, annotator: Annotator, generator: Generator | None = None):
        self.cfg, self.annotator = cfg, annotator
        self.prompt = prompts.get_prompt(cfg.prompt_version)
        self.gen = generator or Generator(cfg.model, cfg.max_new_tokens, cfg.temperature, cfg.hf_dtype,
                                          cfg.hf_device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        srcs = batch.to_pylist()
        out: list[Any] = [None] * len(srcs)
        pending: list[tuple[int, list[dict]]] = []
        for i, src in enumerate(srcs):
            out[i] = self.annotator.read_error(src)
            if out[i] is None:
                messages = self.prompt.messages(src["caption"])
                chars = sum(len(m["content"]) for m in messages)
                if chars > self.cfg.max_prompt_chars:
                    out[i] = self.annotator.quarantine(src, "prompt_too_long",
                                                       f"{chars} > {self.cfg.max_prompt_chars} characters")
                else:
                    pending.append((i, messages))
        for attempt in range(self.cfg.max_retries + 1):
            final = attempt == self.cfg.max_retries
            ids = self.gen.encode([m for _, m in pending])
            sendable = []
            for (i, messages), row_ids in zip(pending, ids):
                if len(row_ids) > self.gen.max_prompt_tokens:
                    out[i] = self.annotator.quarantine(srcs[i], "prompt_too_long",
                                                       f"{len(row_ids)} > {self.gen.max_prompt_tokens} tokens")
                else:
                    sendable.append((i, row_ids))
            retry = []
            for (i, _), (raw, error) in zip(sendable, self.gen.generate_safe([r for _, r in sendable])):
                if error:
                    out[i] = self.annotator.quarantine(srcs[i], "engine_error", error[:2000])
                    continue
                row = self.annotator.from_llm(srcs[i], raw, final)
                problem = row.pop(RETRY_COLUMN, "")
                if problem:
                    retry.append((i, self.prompt.retry_messages(srcs[i]["caption"], raw, problem)))
                out[i] = row  # the quarantined row stands unless the re-ask does better
            pending = retry
            if not pending:
                break
        return to_table(out)


class HFBackend(Backend):
    name = "hf"

    def _ray_args(self) -> dict:
        cfg = self.cfg
        size = cfg.concurrency if cfg.min_concurrency >= cfg.concurrency else (cfg.min_concurrency, cfg.concurrency)
        return {"concurrency": size, "num_gpus": cfg.num_gpus or None, "num_cpus": 1}

    def preflight(self) -> None:
        """Fail fast: enough GPUs in the cluster, and a task with the actors' resources can load the tokenizer
        and config within ``request_timeout_s`` (else the actor pool would wait forever or crash-loop)."""
        import ray

        cfg = self.cfg
        gpus = ray.cluster_resources().get("GPU", 0)
        if cfg.num_gpus and gpus < cfg.num_gpus:
            raise EngineUnavailable(f"hf backend asks {cfg.num_gpus} GPU per actor; the Ray cluster has {gpus}")
        ref = _check_model().options(num_cpus=1, num_gpus=cfg.num_gpus or 0).remote(cfg.model)
        try:
            error = ray.get(ref, timeout=cfg.request_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise EngineUnavailable(f"hf backend: no worker could load {cfg.model!r} within "
                                    f"{cfg.request_timeout_s:.0f}s (resources: {self._ray_args()})") from None
        if error:
            raise EngineUnavailable(f"hf backend cannot load {cfg.model!r}: {error}")

    def annotate(self, rows: "ray.data.Dataset") -> "ray.data.Dataset":
        return rows.map_batches(HFStage, fn_constructor_args=(self.cfg, self.annotator()), batch_format="pyarrow",
                                batch_size=self.cfg.batch_size, **self._ray_args())


@functools.lru_cache(maxsize=1)
def _check_model():
    """A Ray task that loads the model's config and tokenizer (not the weights), built on first use."""
    import ray

    @ray.remote(max_retries=0)
    def check(model: str) -> str:
        try:
            from transformers import AutoConfig, AutoTokenizer

            AutoConfig.from_pretrained(model, local_files_only=True)
            AutoTokenizer.from_pretrained(model, local_files_only=True)
            return ""
        except Exception as err:
            return f"{type(err).__name__}: {err}"

    return check
