"""OpenAI-shaped answers from engine completions: choices, usage, logprobs and streamed chunks.

A choice bills its generated tokens (a matched eos included, as SGLang counts) up to the token
that completed a stop string; its text is decoded without the eos and cut before the stop
string. A stream is one chunk per billed token (its text delta and logprobs), then the
finish reason, then usage when `stream_options.include_usage` is set.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Sequence

from ace_jax.inference.openai_api import ParsedOpenAI
from rollout.engine import Completion

TopLogprobs = list[list[tuple[int, float]]]  # per token: (token id, logprob) of the k likeliest


@dataclasses.dataclass
class Choice:
    """One finished sample as OpenAI reports it: the counted tokens and the visible text."""

    index: int
    token_ids: list[int]            # tokens billed (a matched eos included), up to a stop string
    logprobs: list[float] | None
    text: str
    finish_reason: str              # "stop" or "length"
    shown: int = 0                  # leading token_ids that make up `text` (a billed eos does not)


def _decode(tokenizer, ids: Sequence[int], skip_special: bool) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=skip_special)


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
    return _decode(tokenizer, [token], False)


def _chat_entry(tokenizer, token: int, logprob: float) -> dict[str, Any]:
    text = token_text(tokenizer, token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, ids: list[int], logprobs: list[float], tops: TopLogprobs | None
                  ) -> dict[str, Any]:
    """The chat `logprobs.content` list: one entry per billed token."""
    content = []
    for i, (t, lp) in enumerate(zip(ids, logprobs)):
        entry = _chat_entry(tokenizer, t, lp)
        entry["top_logprobs"] = [_chat_entry(tokenizer, a, b) for a, b in tops[i]] if tops else []
        content.append(entry)
    return {"content": content}


def text_logprobs(tokenizer, ids: list[int], logprobs: list[float], tops: TopLogprobs | None,
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
