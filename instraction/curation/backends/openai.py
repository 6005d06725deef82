"""Any OpenAI-compatible chat server (``vllm serve``, SGLang, TGI, a hosted API) through ray.data.llm's
``HttpRequestProcessorConfig``: the JSON schema goes in ``response_format`` so servers that support structured
outputs constrain decoding; the shared parser validates either way.

The key is read from the environment variable ``curation.api_key_env`` on the driver and sent as a header; it
never enters config or logs. A response that is not JSON (a proxy's HTML error page) or an error object becomes
that row's ``engine_error`` instead of failing the batch (see :class:`TolerantResponse`).
"""

from __future__ import annotations

import functools
import json
import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from instraction.curation import prompts
from instraction.curation.backends.base import Backend, EngineUnavailable, carry, request_messages, run_processor_passes

if TYPE_CHECKING:
    import ray.data


@functools.lru_cache(maxsize=1)
def _tolerant_response_class():
    import aiohttp

    class TolerantResponse(aiohttp.ClientResponse):
        """``json()`` never raises: a body that is not a JSON object becomes ``{"error": {...}}`` so that
        ray.data.llm's HTTP stage hands it to postprocess (one bad response must not kill the batch)."""

        async def json(self, *args: Any, **kwargs: Any) -> Any:
            text = await self.text(errors="replace")
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if not isinstance(value, dict) or not value:
                return {"error": {"message": f"HTTP {self.status}: {text[:1000]}", "status": self.status}}
            return value

    return TolerantResponse


def make_session(timeout_s: float):
    """Session factory for the HTTP stage (module-level: shipped to Ray actors by reference)."""
    import aiohttp

    return aiohttp.ClientSession(response_class=_tolerant_response_class(),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


def preprocess(row: dict, *, model: str, prompt_version: str, max_tokens: int, temperature: float) -> dict:
    """Row -> ``{"payload": chat completion request}`` (first ask or re-ask, with the JSON schema)."""
    prompt = prompts.get_prompt(prompt_version)
    return {"payload": {
        "model": model,
        "messages": request_messages(row, prompt_version),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "instraction_curation", "schema": prompt.schema, "strict": True}},
    }}


def postprocess(row: dict) -> dict:
    """HTTP response -> the row's input columns + ``raw_output`` + ``engine_error``."""
    resp = row.get("http_response")
    out = carry(row)
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if choices:
        message = choices[0].get("message") or {}
        out.update(raw_output=str(message.get("content") or ""), engine_error="")
    else:
        # Ray Data may merge differently shaped responses into one struct column: absent fields come back None
        error = (resp.get("error") or {k: v for k, v in resp.items() if v is not None}) if isinstance(resp, dict) \
            else resp
        out.update(raw_output="", engine_error=json.dumps(error, default=str)[:2000] if error else "empty response")
    return out


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, cfg):
        super().__init__(cfg)
        self._model = cfg.model

    @property
    def base_url(self) -> str:
        return self.cfg.base_url.rstrip("/")

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _get(self, path: str) -> Any:
        req = urllib.request.Request(self.base_url + path, headers=self._headers())
        with urllib.request.urlopen(req, timeout=min(30.0, self.cfg.request_timeout_s)) as resp:
            return json.loads(resp.read().decode("utf-8"))

    @property
    def model(self) -> str:
        """``curation.model``, or the one model the server lists when unset."""
        if not self._model:
            self._model = self._served_models()[0]
        return self._model

    def _served_models(self) -> list[str]:
        try:
            models = [m["id"] for m in self._get("/models").get("data", [])]
        except (urllib.error.URLError, OSError, ValueError, KeyError, AttributeError) as err:
            raise EngineUnavailable(f"openai backend: cannot reach {self.base_url}/models: "
                                    f"{type(err).__name__}: {err}") from None
        if not models:
            raise EngineUnavailable(f"openai backend: {self.base_url} serves no model")
        return models

    def preflight(self) -> None:
        """The server answers ``/models`` (within 30 s) and serves the configured model."""
        served = self._served_models()
        if self.model not in served:
            raise EngineUnavailable(f"openai backend: model {self.model!r} not served by {self.base_url}; "
                                    f"served: {served[:10]}")

    def build_processor(self):
        from ray.data.llm import HttpRequestProcessorConfig, build_processor

        cfg = self.cfg
        config = HttpRequestProcessorConfig(
            url=f"{self.base_url}/chat/completions",
            headers=self._headers(),
            qps=cfg.http_qps or None,
            max_retries=2,  # transport-level retries (429/5xx/timeouts); the schema re-ask is separate
            batch_size=cfg.batch_size,
            concurrency=cfg.concurrency,
            session_factory=functools.partial(make_session, cfg.request_timeout_s),
            # ray.data.llm's HTTP stage awaits a batch's requests one after another, so requests in flight =
            # HTTP actors = curation.concurrency; they wait on the network, hence a quarter CPU each
            http_request_stage={"num_cpus": 0.25},
        )
        return build_processor(
            config,
            preprocess=functools.partial(preprocess, model=self.model, prompt_version=cfg.prompt_version,
                                         max_tokens=cfg.max_new_tokens, temperature=cfg.temperature),
            postprocess=postprocess,
        )

    def annotate(self, rows: "ray.data.Dataset") -> "ray.data.Dataset":
        return run_processor_passes(rows, self.build_processor, self.annotator(), self.cfg.max_prompt_chars,
                                    self.cfg.max_retries)
