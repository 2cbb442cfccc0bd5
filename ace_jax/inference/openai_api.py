"""OpenAI's `/v1/chat/completions` and `/v1/completions` request and response JSON <-> engine types.

Matched against the OpenAI API reference and SGLang 0.5.23's OpenAI-compatible server
(python/sglang/srt/entrypoints/openai/protocol.py): `chat_template_kwargs` (e.g. Qwen3's
`{"enable_thinking": false}`), `top_k`, `min_p` and `skip_special_tokens` are SGLang's
extensions. A parameter we cannot honour is refused with an OpenAI-shaped error naming it.
Stop strings are applied to the decoded text after generation (the engine stops on tokens).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Sequence

from ace_jax.inference import api
from rollout.engine import Completion, GenerateRequest

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


@dataclasses.dataclass
class Choice:
    """One finished sample as OpenAI reports it: the counted tokens and the visible text."""

    index: int
    token_ids: list[int]            # tokens billed (a matched eos included), up to a stop string
    logprobs: list[float] | None
    text: str
    finish_reason: str              # "stop" or "length"
    shown: int = 0                  # leading token_ids that make up `text` (a billed eos does not)


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
        if tokenizer is None:
            raise OpenAIError("a text prompt needs a tokenizer and the model directory has none; send token ids",
                              param="prompt")
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
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise OpenAIError("chat completions need the model directory's tokenizer and chat template; this "
                          "server has none (use /v1/completions with token ids)", param="messages")
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
    model = _required(body, "model")
    if model != model_name:
        raise OpenAIError(f"The model `{model}` does not exist; this server serves `{model_name}`.",
                          status=404, param="model", code="model_not_found")
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


# ----------------------------------------------------------------------------- answers
def _decode(tokenizer, ids: Sequence[int], skip_special: bool) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=skip_special) if tokenizer is not None else ""


def _tokens_up_to_stop(tokenizer, ids: list[int], stop: str, skip_special: bool) -> int:
    """The fewest leading tokens whose text contains `stop` (binary search; prefixes only grow)."""
    low, high = 1, len(ids)
    while low < high:
        mid = (low + high) // 2
        if stop in _decode(tokenizer, ids[:mid], skip_special):
            high = mid
        else:
            low = mid + 1
    return low


def make_choice(index: int, c: Completion, parsed: ParsedOpenAI, tokenizer) -> Choice:
    """Trim a completion's eos and any stop string; what is billed and what is shown."""
    ids, skip = list(c.token_ids), parsed.skip_special_tokens
    visible = ids[:-1] if c.finish_reason == "stop" else ids
    text = _decode(tokenizer, visible, skip)
    finish = "stop" if c.finish_reason == "stop" else "length"
    hits = [(text.find(s), s) for s in parsed.stop if s in text]
    if hits:
        cut, stop = min(hits)
        ids = visible = visible[:_tokens_up_to_stop(tokenizer, visible, stop, skip)]
        text, finish = text[:cut], "stop"
    logprobs = None if c.logprobs is None else [float(x) for x in c.logprobs[:len(ids)]]
    return Choice(index, ids, logprobs, text, finish, len(visible))


def make_choices(parsed: ParsedOpenAI, completions: list[list[Completion]], tokenizer) -> list[Choice]:
    """Prompt-major choices: index = prompt * n + sample, as OpenAI numbers them."""
    flat = [c for comps in completions for c in comps]
    return [make_choice(i, c, parsed, tokenizer) for i, c in enumerate(flat)]


def usage(parsed: ParsedOpenAI, choices: list[Choice]) -> dict[str, int]:
    prompt = sum(len(r.input_ids) for r in parsed.requests)
    completion = sum(len(ch.token_ids) for ch in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def token_text(tokenizer, token: int) -> str:
    return _decode(tokenizer, [token], False) if tokenizer is not None else str(token)


def _chat_entry(tokenizer, token: int, logprob: float) -> dict[str, Any]:
    text = token_text(tokenizer, token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]] | None
                  ) -> dict[str, Any]:
    """The chat `logprobs.content` list: one entry per billed token."""
    content = []
    for i, (t, lp) in enumerate(zip(ids, logprobs)):
        entry = _chat_entry(tokenizer, t, lp)
        entry["top_logprobs"] = [_chat_entry(tokenizer, a, b) for a, b in tops[i]] if tops else []
        content.append(entry)
    return {"content": content}


def text_logprobs(tokenizer, ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]] | None,
                  offset: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)."""
    tokens = [token_text(tokenizer, t) for t in ids]
    offsets, at = [], offset
    for tok in tokens:
        offsets.append(at)
        at += len(tok)
    top = [{token_text(tokenizer, a): b for a, b in alts} for alts in tops] if tops else None
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def _logprobs_of(parsed: ParsedOpenAI, tokenizer, ch: Choice, tops) -> dict[str, Any] | None:
    if not parsed.logprobs or ch.logprobs is None:
        return None
    fn = chat_logprobs if parsed.kind == "chat" else text_logprobs
    return fn(tokenizer, ch.token_ids, ch.logprobs, tops)


def response(parsed: ParsedOpenAI, choices: list[Choice], tokenizer, *, fingerprint: str,
             tops: list | None = None) -> dict[str, Any]:
    """The whole (non-streamed) answer; `tops[i]` are choice i's top logprobs per token."""
    out = []
    for ch in choices:
        lp = _logprobs_of(parsed, tokenizer, ch, tops[ch.index] if tops else None)
        if parsed.kind == "chat":
            out.append({"index": ch.index, "message": {"role": "assistant", "content": ch.text},
                        "logprobs": lp, "finish_reason": ch.finish_reason})
        else:
            out.append({"index": ch.index, "text": ch.text, "logprobs": lp, "finish_reason": ch.finish_reason})
    return {**_header(parsed, fingerprint), "choices": out, "usage": usage(parsed, choices)}


def _header(parsed: ParsedOpenAI, fingerprint: str, chunk: bool = False) -> dict[str, Any]:
    prefix, obj = ("chatcmpl", "chat.completion") if parsed.kind == "chat" else ("cmpl", "text_completion")
    if chunk and parsed.kind == "chat":
        obj = "chat.completion.chunk"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()),
            "model": parsed.model, "system_fingerprint": fingerprint}


def text_deltas(tokenizer, ids: list[int], text: str, skip_special: bool) -> list[str]:
    """Per token, the new text it adds (empty while a UTF-8 character is incomplete); they join to `text`."""
    deltas, shown = [], 0
    for i in range(len(ids)):
        prefix = _decode(tokenizer, ids[:i + 1], skip_special)
        end = shown if prefix.endswith("\ufffd") else min(len(prefix), len(text))
        deltas.append(text[shown:max(end, shown)])
        shown = max(end, shown)
    if deltas:
        deltas[-1] += text[shown:]
    return deltas


def stream_chunks(parsed: ParsedOpenAI, choices: list[Choice], tokenizer, *, fingerprint: str,
                  tops: list | None = None) -> list[dict[str, Any]]:
    """The server-sent events of a streamed answer (before `[DONE]`): one chunk per token per choice."""
    head = _header(parsed, fingerprint, chunk=True)
    extra = {"usage": None} if parsed.include_usage else {}
    chunks = []

    def add(index: int, delta: Any, logprobs: Any = None, finish: str | None = None) -> None:
        body = ({"index": index, "delta": delta} if parsed.kind == "chat" else {"index": index, "text": delta})
        chunks.append({**head, "choices": [{**body, "logprobs": logprobs, "finish_reason": finish}], **extra})

    for ch in choices:
        if parsed.kind == "chat":
            add(ch.index, {"role": "assistant", "content": ""})
        deltas = text_deltas(tokenizer, ch.token_ids[:ch.shown], ch.text, parsed.skip_special_tokens)
        deltas += [""] * (len(ch.token_ids) - len(deltas))
        tops_ch = tops[ch.index] if tops else None
        for i, (token, delta) in enumerate(zip(ch.token_ids, deltas)):
            lp = None
            if parsed.logprobs and ch.logprobs is not None:
                one = Choice(ch.index, [token], [ch.logprobs[i]], delta, ch.finish_reason)
                lp = _logprobs_of(parsed, tokenizer, one, [tops_ch[i]] if tops_ch else None)
            add(ch.index, {"content": delta} if parsed.kind == "chat" else delta, lp)
        add(ch.index, {} if parsed.kind == "chat" else "", None, ch.finish_reason)
    if parsed.include_usage:
        chunks.append({**head, "choices": [], "usage": usage(parsed, choices)})
    return chunks


def model_card(model_name: str, *, root: str | None, max_model_len: int, created: int) -> dict[str, Any]:
    """The served model as `/v1/models` lists it and `/v1/models/{id}` answers."""
    return {"id": model_name, "object": "model", "created": created, "owned_by": "ace-jax", "root": root,
            "max_model_len": max_model_len}
