"""A small OpenAI-compatible chat server for tests: serves a local HF causal LM through real ``generate``.

    server = OpenAIStubServer(model_dir, name="tiny")   # binds 127.0.0.1 on a free port, serves in a thread
    server.base_url                                     # "http://127.0.0.1:PORT/v1"
    server.close()

    python tests/openai_stub_server.py MODEL_DIR [--port 8000]   # standalone

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions`` (messages, max_tokens, temperature; the
``response_format`` is accepted and, like a server without structured outputs, not enforced). Errors are shaped
like vLLM's: an unknown model -> 404, a prompt over the context -> 400 with a JSON error body. For the tests of
the client's tolerance, a user message containing ``STUB_HTML_500`` gets a non-JSON HTML 500 page.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Model:
    def __init__(self, model_dir: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.lock = threading.Lock()  # one generate at a time: the model is shared by the handler threads

    def chat(self, messages: list[dict], max_tokens: int, temperature: float) -> tuple[str, int, int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True, return_tensors="pt")["input_ids"]
        if ids.shape[1] + max_tokens > self.max_len:
            raise ValueError(f"This model's maximum context length is {self.max_len} tokens. However, you "
                             f"requested {ids.shape[1] + max_tokens} tokens.")
        with self.lock, self.torch.inference_mode():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=temperature > 0, temperature=temperature or None,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(ids.shape[1]), int(new.shape[0])


def _handler(model: _Model, name: str, log: list):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: str, content_type: str = "application/json") -> None:
            data = body.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, json.dumps({"object": "error", "message": message, "type": "BadRequestError",
                                         "param": None, "code": code}))

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": name, "object": "model"}]}))
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            try:
                req = json.loads(body)
                messages = req["messages"]
                assert isinstance(messages, list) and messages
            except Exception as err:
                return self._error(400, f"bad request: {err}")
            log.append(str(messages[-1].get("content", "")))
            if req.get("model") != name:
                return self._error(404, f"The model `{req.get('model')}` does not exist.")
            if any("STUB_HTML_500" in str(m.get("content", "")) for m in messages):
                return self._send(500, "<html><body><h1>500 Internal Server Error</h1></body></html>", "text/html")
            try:
                text, n_in, n_out = model.chat(messages, int(req.get("max_tokens") or 16),
                                               float(req.get("temperature") or 0.0))
            except ValueError as err:
                return self._error(400, str(err))
            self._send(200, json.dumps({
                "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
            }))

    return Handler


class OpenAIStubServer:
    """Serve ``model_dir`` as model ``name`` on 127.0.0.1 (``port=0``: a free port) from a daemon thread."""

    def __init__(self, model_dir: str, name: str = "tiny", port: int = 0):
        self.name = name
        self.requests: list[str] = []  # the last message of every chat request received, in order
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(_Model(model_dir), name, self.requests))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="openai-stub", daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--name", default="tiny")
    parser.add_argument("--port", type=int, default=8000)
    ns = parser.parse_args()
    server = OpenAIStubServer(ns.model_dir, ns.name, ns.port)
    print(f"serving {ns.model_dir} as {ns.name!r} at {server.base_url}", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.close()
