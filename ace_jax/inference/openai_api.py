"""OpenAI's `/v1/chat/completions` and `/v1/completions` requests -> engine requests (answers: openai_answer.py).

Matched against the OpenAI API reference and SGLang 0.5.23's OpenAI-compatible server
(python/sglang/srt/entrypoints/openai/protocol.py): `chat_template_kwargs` (e.g. Qwen3's
`{"enable_thinking": false}`), `top_k`, `min_p` and `skip_special_tokens` are SGLang's
extensions. A parameter we cannot honour is refused with an OpenAI-shaped error naming it.
Stop strings are applied to the decoded text after generation (the engine stops on tokens).
The routes answer text, so they need the model directory's tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ace_jax.inference import api
from rollout.engine import GenerateRequest

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20

_NUMBER, _INT, _STR, _BOOL, _LIST, _DICT = "number", "integer", "string", "boolean", "array", "object"
_JSON_NAMES = {bool: _BOOL, int: _INT, float: _NUMBER, str: _STR, list: _LIST, dict: _DICT, type(None): "null"}
# name -> expected JSON type, for the fields both routes share.
_COMMON = {"model": _STR, "max_tokens": _INT, "temperature": _NUMBER, "top_p": _NUMBER, "n": _INT,
           "seed": _INT, "stream": _BOOL, "stream_options": _DICT, "top_k": _INT, "min_p": _NUMBER,
           "skip_special_tokens": _BOOL, "user": _STR, "presence_penalty": _NUMBER,
           "frequency_penalty": _NUMBER, "logit_bias": _DICT, "stop": None}
_CHAT = {**_COMMON, "messages": _LIST, "max_completion_tokens": _INT, "logprobs": _BOOL,
         "top_logprobs": _INT, "chat_template_kwargs": _DICT, "response_format": _DICT,
         "tools": _LIST, "tool_choice": None, "parallel_tool_calls": _BOOL, "store": _BOOL,
         "metadata": _DICT}
_TEXT = {**_COMMON, "prompt": None, "logprobs": _INT, "echo": _BOOL, "suffix": _STR, "best_of": _INT}
# Accepted only at these values: anything else would change the samples.
_NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "echo": False, "tools": [],
            "tool_choice": "none", "suffix": ""}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def error_body(message: str, kind: str = "server_error") -> dict[str, Any]:
    """The OpenAI error object for failures that are not an `OpenAIError`."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@dataclasses.dataclass
class ParsedOpenAI:
    """A chat or completions request as engine requests, plus what the answer needs."""

    kind: str                       # "chat" or "text"
    model: str
    requests: list[GenerateRequest]
    stop: list[str]
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool
    skip_special_tokens: bool
    temperature: float


def _json_type(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _check_types(body: dict[str, Any], schema: dict[str, str | None], route: str) -> None:
    for key, value in body.items():
        if key not in schema:
            raise OpenAIError(f"Unrecognized request argument supplied: {key} (not supported by {route})",
                              param=key, code="unknown_parameter")
        expected = schema[key]
        if value is None:
            continue
        got = _json_type(value)
        if expected is not None and not (got == expected or (expected == _NUMBER and got == _INT)):
            raise OpenAIError(f"Invalid type for '{key}': expected {'a' if expected != _INT else 'an'} {expected}, "
                              f"but got {'a' if got != _INT else 'an'} {got} instead.", param=key, code="invalid_type")
        if key in _NEUTRAL and value != _NEUTRAL[key]:
            raise OpenAIError(f"'{key}'={value!r} is not supported by ace-jax serve", param=key,
                              code="unsupported_parameter")


def check_model(name: str, served: str) -> None:
    """OpenAI's 404 `model_not_found` unless `name` is the served model's id."""
    if name != served:
        raise OpenAIError(f"The model `{name}` does not exist; this server serves `{served}`.",
                          status=404, param="model", code="model_not_found")


def _in_range(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is not None and not low <= value <= high:
        raise OpenAIError(f"'{key}' must be between {low} and {high}, got {value}", param=key,
                          code="invalid_value")


def _required(body: dict[str, Any], key: str) -> Any:
    if body.get(key) is None:
        raise OpenAIError(f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter")
    return body[key]


def _stop_strings(stop: Any) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise OpenAIError(f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS} such strings",
                          param="stop", code="invalid_value")
    return stops


def _prompts_of(prompt: Any, tokenizer) -> list[list[int]]:
    """`/v1/completions`' prompt: a string, a list of strings, a list of ints or a list of such lists."""
    def is_ids(p: Any) -> bool:
        return isinstance(p, list) and bool(p) and all(isinstance(t, int) and not isinstance(t, bool) for t in p)

    if isinstance(prompt, str):
        prompt = [prompt]
    elif is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompt]
    if isinstance(prompt, list) and prompt and all(is_ids(p) for p in prompt):
        return prompt
    raise OpenAIError("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                      param="prompt", code="invalid_type")


def _text_content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise OpenAIError(f"messages[{index}].content must be a string or a list of text parts",
                      param=f"messages[{index}].content", code="invalid_type")


def chat_prompt(messages: Any, tokenizer, template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """Token ids of `messages` through the checkpoint's chat template, with a generation prompt."""
    if not isinstance(messages, list) or not messages:
        raise OpenAIError("'messages' must be a non-empty array", param="messages", code="invalid_value")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise OpenAIError(f"messages[{i}] must be an object with a string 'role'", param=f"messages[{i}]",
                              code="invalid_type")
        turns.append({"role": "system" if m["role"] == "developer" else m["role"],
                      "content": _text_content(m.get("content"), i)})
    if getattr(tokenizer, "chat_template", None) is None:
        raise OpenAIError("chat completions need a chat template and the model directory's tokenizer has none "
                          "(use /v1/completions)", param="messages")
    try:
        ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=False,
                                            **(template_kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - a template error is the request's fault
        raise OpenAIError(f"the chat template failed on these messages: {exc}", param="messages") from exc
    return [int(t) for t in ids]


def parse(body: Any, kind: str, *, model_name: str, tokenizer, defaults: dict[str, Any],
          max_new_tokens: int, context: int) -> ParsedOpenAI:
    """Validate a chat (`kind="chat"`) or completions (`kind="text"`) body into engine requests.

    `max_new_tokens` is the default when the request gives none (OpenAI: up to the context)."""
    route = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    if not isinstance(body, dict):
        raise OpenAIError("the request body must be a JSON object")
    _check_types(body, _CHAT if kind == "chat" else _TEXT, route)
    if tokenizer is None:
        raise OpenAIError(f"{route} answers text and needs a tokenizer; the model directory has none "
                          "(use /generate with input_ids)")
    model = _required(body, "model")
    check_model(model, model_name)
    for key, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("n", 1, 128), ("top_logprobs", 0,
                           MAX_TOP_LOGPROBS), ("max_tokens", 1, 2**31), ("max_completion_tokens", 1, 2**31)):
        _in_range(body, key, low, high)
    if kind == "chat":
        prompts = [chat_prompt(_required(body, "messages"), tokenizer, body.get("chat_template_kwargs"))]
        logprobs, top = bool(body.get("logprobs")), int(body.get("top_logprobs") or 0)
        if top and not logprobs:
            raise OpenAIError("'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
        fmt = (body.get("response_format") or {}).get("type", "text")
        if fmt != "text":
            raise OpenAIError(f"response_format {fmt!r} is not supported by ace-jax serve", param="response_format")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
    else:
        prompts = _prompts_of(_required(body, "prompt"), tokenizer)
        _in_range(body, "logprobs", 0, MAX_TOP_LOGPROBS)
        logprobs, top = body.get("logprobs") is not None, int(body.get("logprobs") or 0)
        limit = body.get("max_tokens") or 16
        best_of = body.get("best_of")
        if best_of is not None and best_of != (body.get("n") or 1):
            raise OpenAIError("'best_of' other than 'n' is not supported by ace-jax serve", param="best_of")
    longest = max(len(p) for p in prompts)
    limit = limit or max(1, min(max_new_tokens, context - longest))
    params = {"max_new_tokens": limit, "temperature": body.get("temperature"), "top_p": body.get("top_p"),
              "top_k": body.get("top_k"), "min_p": body.get("min_p"), "n": body.get("n"),
              "sampling_seed": body.get("seed")}
    try:
        sampling, n, _ = api.sampling_from({k: v for k, v in params.items() if v is not None}, defaults)
        requests = [GenerateRequest(tuple(p), sampling, n=n, return_logprob=logprobs) for p in prompts]
    except (api.RequestError, ValueError) as exc:
        raise OpenAIError(str(exc)) from exc
    options = body.get("stream_options") or {}
    return ParsedOpenAI(kind, model, requests, _stop_strings(body.get("stop")), logprobs, top,
                        bool(body.get("stream")), bool(options.get("include_usage")),
                        bool(body.get("skip_special_tokens", True)), sampling.temperature)
