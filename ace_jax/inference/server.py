"""`ace-jax serve`: the embedded engine behind the part of SGLang's native HTTP API we use.

Routes and answers follow SGLang 0.5.23 (python/sglang/srt/entrypoints/http_server.py):
GET /health, /health_generate, /get_model_info, /get_server_info, /get_weight_version;
POST /generate, /update_weights_from_disk, /release_memory_occupation,
/resume_memory_occupation, /pause_generation, /continue_generation (semantics for a
whole-batch engine: batcher.py); GET or POST /flush_cache. Errors are
`{"error": {"message": ...}}` with status 400 (bad request) or 500. OpenAI's routes
(GET /v1/models, POST /v1/chat/completions, /v1/completions; openai_api.py, openai_answer.py) answer errors
in OpenAI's shape and go through the same batcher. A stdlib threaded HTTP server takes the
connections; one batcher thread runs the engine.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ace_jax.inference import api, openai_answer, openai_api
from ace_jax.inference.batcher import Batcher
from ace_jax.inference.engine import JaxEngine
from ace_jax.inference.top_logprobs import top_logprobs
from rollout.engine import PAUSE_MODES, EngineError, GenerateRequest, SamplingParams

SERVER_VERSION = f"ace-jax (SGLang {api.SGLANG_VERSION} API)"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p")
_LOAD_FORMATS = (None, "auto", "safetensors")


def load_tokenizer(path: str):
    """transformers' AutoTokenizer from a model directory (local files only), or None without one."""
    if not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def sampling_defaults(path: str | None, mode: str) -> dict[str, Any]:
    """SGLang's `--sampling-defaults`: 'model' reads generation_config.json, 'openai' uses none."""
    if mode not in ("model", "openai"):
        raise ValueError(f"sampling defaults {mode!r}; allowed: ['model', 'openai']")
    file = os.path.join(path or "", "generation_config.json")
    if mode == "openai" or not path or not os.path.isfile(file):
        return {}
    with open(file) as f:
        config = json.load(f)
    return {k: config[k] for k in _SAMPLING_DEFAULT_KEYS if config.get(k) is not None}


class ServerState:
    """What every request handler shares."""

    def __init__(self, engine: JaxEngine, *, tokenizer=None, defaults: dict[str, Any] | None = None,
                 batch_wait_s: float = 0.005, model_name: str | None = None):
        self.engine = engine
        self.model_name = model_name or engine.model_path or "default"
        self.started = int(time.time())
        self.tokenizer = tokenizer
        self.defaults = defaults or {}
        self.batcher = Batcher(engine, max_wait_s=batch_wait_s, max_rows=engine.buckets.max_batch)
        self.address = ("", 0)

    def model_info(self) -> dict[str, Any]:
        path = self.engine.model_path
        return {"model_path": path, "tokenizer_path": path if self.tokenizer is not None else None,
                "is_generation": True, "preferred_sampling_params": None,
                "weight_version": self.engine.weight_version}

    def server_info(self) -> dict[str, Any]:
        b = self.engine.buckets
        return {**self.model_info(), "host": self.address[0], "port": self.address[1],
                "skip_tokenizer_init": self.tokenizer is None, "max_running_requests": b.max_batch,
                "buckets": {"batch": list(b.batch), "prompt": list(b.prompt), "generate": list(b.generate)},
                "sampling_defaults": self.defaults,
                "enable_return_routed_experts": self.engine.config.is_moe,
                "internal_states": [{"batches": self.batcher.batches, "calls": self.batcher.calls,
                                     "pending": self.batcher.pending, "paused": self.batcher.paused,
                                     "aborted": self.batcher.aborted,
                                     "compile_count": self.engine.compile_count}],
                "version": SERVER_VERSION}

    def generate(self, body: Any) -> Any:
        start = time.perf_counter()
        parsed = api.parse_generate(body, self.defaults, self.tokenizer)
        completions = self.batcher.submit(parsed.requests)
        return api.format_response(parsed, completions, time.perf_counter() - start, self.tokenizer)

    def openai(self, body: Any, kind: str) -> tuple[openai_api.ParsedOpenAI, Any]:
        """A chat (`kind="chat"`) or completions (`"text"`) request: the answer, or its stream chunks."""
        cfg = self.engine.config
        parsed = openai_api.parse(body, kind, model_name=self.model_name, tokenizer=self.tokenizer,
                                  defaults=self.defaults, max_new_tokens=self.engine.buckets.generate[-1],
                                  context=cfg.max_position_embeddings)
        choices = openai_answer.make_choices(parsed, self.batcher.submit(parsed.requests), self.tokenizer)
        tops = None
        if parsed.top_logprobs:
            prompts = [r.input_ids for r in parsed.requests for _ in range(r.n)]
            with self.batcher.exclusive():
                tops = [top_logprobs(self.engine, p, ch.token_ids, parsed.temperature, parsed.top_logprobs)
                        for p, ch in zip(prompts, choices)]
        fingerprint = f"ace-jax-{self.engine.weight_version}"
        make = openai_answer.stream_chunks if parsed.stream else openai_answer.response
        return parsed, make(parsed, choices, self.tokenizer, fingerprint=fingerprint, tops=tops)

    def openai_model(self, name: str | None = None) -> dict[str, Any]:
        """`/v1/models` (no name) or `/v1/models/{name}`."""
        card = openai_answer.model_card(self.model_name, root=self.engine.model_path, created=self.started,
                                        max_model_len=self.engine.config.max_position_embeddings)
        if name is None:
            return {"object": "list", "data": [card]}
        openai_api.check_model(name, self.model_name)
        return card

    def update_weights(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("model_path"), str):
            raise api.RequestError("'model_path' (a string) is required")
        if body.get("load_format") not in _LOAD_FORMATS:
            raise api.RequestError(f"load_format {body['load_format']!r} not supported; allowed: {list(_LOAD_FORMATS)}")
        version = body.get("weight_version")
        try:
            with self.batcher.exclusive():  # waits for the running batch; queued ones get the new weights
                new = self.engine.update_weights_from_disk(body["model_path"],
                                                           None if version is None else str(version))
        except Exception as exc:  # noqa: BLE001 - reported to the client
            return 400, {"success": False, "message": f"Failed to update weights: {exc}", "num_paused_requests": 0}
        return 200, {"success": True, "message": f"Succeeded to update model weights. Weight version updated to {new}.",
                     "num_paused_requests": 0}

    def pause(self, body: Any) -> dict[str, Any]:
        """SGLang's PauseGenerationReqInput: `mode` is "abort" (default), "retract" or "in_place"."""
        mode = (body or {}).get("mode", "abort") if isinstance(body, dict) else body
        if mode not in PAUSE_MODES:
            raise api.RequestError(f"pause_generation 'mode' is {mode!r}; allowed: {list(PAUSE_MODES)}")
        self.batcher.pause(mode)
        return {"message": "Generation paused successfully.", "status": "ok"}

    def resume(self) -> dict[str, Any]:
        self.batcher.resume()
        return {"message": "Generation continued successfully.", "status": "ok"}

    def memory(self, body: Any, release: bool) -> None:
        tags = (body or {}).get("tags") if isinstance(body, dict) else None
        with self.batcher.exclusive():
            if release:
                self.engine.release_memory_occupation(tags)
            else:
                self.engine.resume_memory_occupation(tags)

    def health_generate(self) -> bool:
        try:
            self.batcher.submit([GenerateRequest((0,), SamplingParams(temperature=0.0, max_new_tokens=1),
                                                 return_logprob=False)])
            return True
        except Exception:  # noqa: BLE001 - unhealthy
            return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ace-jax"
    state: ServerState  # set on the subclass made by make_server
    quiet = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if not self.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, payload: Any = None, text: str | None = None) -> None:
        if text is not None:
            data, ctype = text.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away; nothing to answer

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message}})

    def _send_events(self, chunks: list[Any]) -> None:
        """Server-sent events, chunked: one `data:` line per chunk, then `data: [DONE]`."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in [json.dumps(c) for c in chunks] + ["[DONE]"]:
                data = f"data: {event}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _openai_route(self, method: str, path: str) -> None:
        """/v1/...: OpenAI's routes, with OpenAI-shaped errors."""
        kinds = {"/v1/chat/completions": "chat", "/v1/completions": "text"}
        try:
            if path == "/v1/models" and method == "GET":
                self._send(200, self.state.openai_model())
            elif path.startswith("/v1/models/") and method == "GET":
                self._send(200, self.state.openai_model(urllib.parse.unquote(path[len("/v1/models/"):])))
            elif path in kinds and method == "POST":
                try:
                    body = self._body()
                except api.RequestError as exc:
                    raise openai_api.OpenAIError(str(exc)) from exc
                parsed, answer = self.state.openai(body, kinds[path])
                if parsed.stream:
                    self._send_events(answer)
                else:
                    self._send(200, answer)
            else:
                self._send(404, openai_api.error_body(f"no route {method} {path}", "invalid_request_error"))
        except openai_api.OpenAIError as exc:
            self._send(exc.status, exc.body())
        except (api.RequestError, ValueError, EngineError) as exc:
            self._send(400, openai_api.error_body(str(exc), "invalid_request_error"))
        except Exception as exc:  # noqa: BLE001 - the server keeps serving
            self._send(500, openai_api.error_body(f"{type(exc).__name__}: {exc}"))

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise api.RequestError(f"request body is not valid JSON: {exc}") from exc

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path.startswith("/v1/"):
            return self._openai_route(method, path)
        state = self.state
        try:
            body = self._body() if method in ("POST", "PUT") else {}
            if path == "/health":
                self._send(200 if state.engine.health() else 503, text="")
            elif path == "/health_generate":
                self._send(200 if state.health_generate() else 503, text="")
            elif path == "/get_model_info":
                self._send(200, state.model_info())
            elif path == "/get_weight_version":
                self._send(200, {"weight_version": state.engine.weight_version})
            elif path == "/get_server_info":
                self._send(200, state.server_info())
            elif path == "/generate" and method in ("POST", "PUT"):
                self._send(200, state.generate(body))
            elif path == "/update_weights_from_disk" and method == "POST":
                self._send(*state.update_weights(body))
            elif path == "/pause_generation" and method == "POST":
                self._send(200, state.pause(body))
            elif path == "/continue_generation" and method == "POST":
                self._send(200, state.resume())
            elif path == "/flush_cache":
                ok = state.batcher.pending == 0  # no prefix cache to flush; refuse while busy, as SGLang
                self._send(200 if ok else 400, text="Cache flushed.\n" if ok else
                           "Cache not flushed: there are running or waiting requests.\n")
            elif path in ("/release_memory_occupation", "/resume_memory_occupation"):
                state.memory(body, release=path.startswith("/release"))
                self._send(200, None)
            else:
                self._error(404, f"no route {method} {path}")
        except (api.RequestError, ValueError, EngineError) as exc:
            self._error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - the server keeps serving
            self._error(500, f"{type(exc).__name__}: {exc}")


def make_server(engine: JaxEngine, host: str = "127.0.0.1", port: int = 30000, *, tokenizer=None,
                defaults: dict[str, Any] | None = None, batch_wait_s: float = 0.005,
                quiet: bool = True, model_name: str | None = None) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server; call `serve_forever()`, then `shutdown()`.

    `model_name` is the id OpenAI requests must name (default: the model directory)."""
    state = ServerState(engine, tokenizer=tokenizer, defaults=defaults, batch_wait_s=batch_wait_s,
                        model_name=model_name)
    handler = type("BoundHandler", (Handler,), {"state": state, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    state.address = server.server_address[:2]
    server.state = state  # type: ignore[attr-defined]
    return server


def log(message: str) -> None:
    print(f"ace-jax serve: {message}", file=sys.stderr, flush=True)
