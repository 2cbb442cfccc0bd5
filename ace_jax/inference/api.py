"""SGLang's native `/generate` request and response JSON <-> the rollout engine's data types.

Matched against SGLang 0.5.23 (GenerateReqInput in python/sglang/srt/managers/io_struct.py,
the response's meta_info built by the tokenizer manager, FINISH_* reasons' to_json). A batch of
prompts with n samples each gives a flat list, prompt-major; a single prompt with n == 1 a dict.
Anything we do not implement is refused with an error naming the field, never ignored when it
would change the samples.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import numpy as np

from rollout.engine import Completion, GenerateRequest, SamplingParams

SGLANG_VERSION = "0.5.23"

_SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop_token_ids", "n",
                  "ignore_eos", "sampling_seed", "skip_special_tokens", "no_stop_trim",
                  "spaces_between_special_tokens")
# Accepted only at their neutral value: anything else would change the distribution.
_NEUTRAL_SAMPLING = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
                     "min_new_tokens": 0, "stop": None, "logit_bias": None, "custom_params": None,
                     "json_schema": None, "regex": None, "ebnf": None, "structural_tag": None,
                     "stream_interval": None}
# Top-level fields accepted only at their neutral value (or ignored, for bookkeeping fields).
_NEUTRAL_TOP = {"stream": False, "logprob_start_len": -1, "top_logprobs_num": 0, "token_ids_logprob": None,
                "return_hidden_states": False, "routed_experts_start_len": 0, "input_embeds": None,
                "image_data": None, "video_data": None, "audio_data": None, "lora_path": None,
                "session_params": None, "custom_logit_processor": None, "return_entropy": False,
                "return_prompt_token_ids": False}
_IGNORED_TOP = ("log_metrics", "priority", "custom_labels", "no_logs", "session_id", "extra_key",
                "conversation_id", "routing_key", "routed_dp_rank", "data_parallel_rank", "background")
_TOP_KEYS = ("text", "input_ids", "sampling_params", "return_logprob", "return_routed_experts", "rid",
             "return_text_in_logprobs")


class RequestError(ValueError):
    """A request the server refuses (HTTP 400); the message names the field."""


@dataclasses.dataclass
class ParsedGenerate:
    """A `/generate` body as engine requests, plus what the response needs."""

    requests: list[GenerateRequest]
    single: bool                    # answer a dict instead of a list
    rids: list[str]
    decode: list[dict[str, bool]]   # per prompt: skip_special_tokens, no_stop_trim
    text_in_logprobs: bool


def _neutral(value: Any, neutral: Any) -> bool:
    return value is None or value == neutral or (neutral is None and value in ([], "", {}))


def _per_prompt(value: Any, count: int, name: str) -> list:
    if isinstance(value, list):
        if len(value) != count:
            raise RequestError(f"'{name}' has {len(value)} entries for a batch of {count} prompts")
        return value
    return [value] * count


def sampling_from(params: dict[str, Any], defaults: dict[str, Any]) -> tuple[SamplingParams, int, dict]:
    """(SamplingParams, n, decode options) from one SGLang `sampling_params` dict."""
    if not isinstance(params, dict):
        raise RequestError(f"'sampling_params' must be an object, got {type(params).__name__}")
    for key, value in params.items():
        if key in _NEUTRAL_SAMPLING:
            if not _neutral(value, _NEUTRAL_SAMPLING[key]):
                raise RequestError(f"sampling_params.{key}={value!r} is not supported by ace-jax serve")
        elif key not in _SAMPLING_KEYS:
            raise RequestError(f"unknown sampling_params key {key!r}; supported: {list(_SAMPLING_KEYS)}")
    merged = {**defaults, **{k: v for k, v in params.items() if v is not None}}
    try:
        sp = SamplingParams(
            temperature=float(merged.get("temperature", 1.0)), top_p=float(merged.get("top_p", 1.0)),
            top_k=int(merged.get("top_k", -1)), min_p=float(merged.get("min_p", 0.0)),
            max_new_tokens=int(merged.get("max_new_tokens", 128)),
            stop_token_ids=tuple(merged.get("stop_token_ids") or ()),
            ignore_eos=bool(merged.get("ignore_eos", False)), seed=merged.get("sampling_seed"))
        n = int(merged.get("n", 1))
    except (TypeError, ValueError) as exc:
        raise RequestError(f"bad sampling_params: {exc}") from exc
    if n < 1:
        raise RequestError(f"sampling_params.n must be >= 1, got {n}")
    decode = {"skip_special_tokens": bool(merged.get("skip_special_tokens", True)),
              "no_stop_trim": bool(merged.get("no_stop_trim", False))}
    return sp, n, decode


def parse_generate(body: Any, defaults: dict[str, Any], tokenizer=None) -> ParsedGenerate:
    """Validate a `/generate` body; `defaults` are the server's sampling defaults."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for key, value in body.items():
        if key in _NEUTRAL_TOP:
            if not _neutral(value, _NEUTRAL_TOP[key]):
                raise RequestError(f"'{key}'={value!r} is not supported by ace-jax serve")
        elif key not in _TOP_KEYS and key not in _IGNORED_TOP:
            raise RequestError(f"unknown /generate field {key!r}")
    text, ids = body.get("text"), body.get("input_ids")
    if (text is None) == (ids is None):
        raise RequestError("give exactly one of 'text' or 'input_ids'")
    if text is not None:
        if tokenizer is None:
            raise RequestError("'text' needs a tokenizer and the model directory has none; send 'input_ids'")
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError("'text' must be a string or a non-empty list of strings")
        prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:
        single = isinstance(ids, list) and bool(ids) and not isinstance(ids[0], list)
        prompts = [ids] if single else ids
        if not isinstance(prompts, list) or not prompts or not all(
                isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
                for p in prompts):
            raise RequestError("'input_ids' must be a non-empty list of ints or a list of such lists")
    count = len(prompts)
    sampling = _per_prompt(body.get("sampling_params") or {}, count, "sampling_params")
    lp = body.get("return_logprob")
    logprob = _per_prompt(lp if isinstance(lp, list) else bool(lp), count, "return_logprob")
    routed = bool(body.get("return_routed_experts", False))
    parsed = [sampling_from(s or {}, defaults) for s in sampling]
    ns = {n for _, n, _ in parsed}
    if len(ns) > 1:
        raise RequestError("sampling_params.n must be the same for every prompt of a batch")
    n = ns.pop()
    rid = body.get("rid")
    if isinstance(rid, list):
        rids = [str(r) for r in _per_prompt(rid, count, "rid")]
    else:
        base = str(rid) if rid is not None else _new_rid()
        rids = [base] if count == 1 else [f"{base}_{i}" for i in range(count)]
    try:
        requests = [GenerateRequest(tuple(p), sp, n=n, return_logprob=bool(lp), return_routed_experts=routed,
                                    rid=r) for p, (sp, _, _), lp, r in zip(prompts, parsed, logprob, rids)]
    except ValueError as exc:
        raise RequestError(str(exc)) from exc
    return ParsedGenerate(requests, single and n == 1, rids, [d for _, _, d in parsed],
                          bool(body.get("return_text_in_logprobs", False)))


def _new_rid() -> str:
    import uuid
    return uuid.uuid4().hex


def finish_reason_json(c: Completion) -> dict[str, Any]:
    """SGLang's FINISH_MATCHED_TOKEN / FINISH_LENGTH / FINISH_ABORT `to_json()`."""
    if c.finish_reason == "stop":
        return {"type": "stop", "matched": c.matched_stop}
    if c.finish_reason == "length":
        return {"type": "length", "length": len(c.token_ids)}
    return {"type": "abort", "message": "aborted"}


def encode_routed_experts(experts: np.ndarray) -> str:
    """base64 of little-endian int32 [tokens - 1, moe_layers * top_k] (SGLang's layout)."""
    flat = np.ascontiguousarray(experts.reshape(experts.shape[0], -1), dtype="<i4")
    return base64.b64encode(flat.tobytes()).decode("ascii")


def format_sample(c: Completion, *, rid: str, request: GenerateRequest, decode: dict[str, bool],
                  text_in_logprobs: bool, latency: float, tokenizer=None) -> dict[str, Any]:
    """One sample of the `/generate` response."""
    meta: dict[str, Any] = {
        "id": rid, "finish_reason": finish_reason_json(c), "prompt_tokens": c.prompt_tokens,
        "weight_version": c.weight_version, "completion_tokens": len(c.token_ids), "cached_tokens": 0,
        "e2e_latency": latency,
    }
    if request.return_logprob:
        words = [tokenizer.decode([t]) if (tokenizer is not None and text_in_logprobs) else None
                 for t in c.token_ids]
        meta["output_token_logprobs"] = [[float(lp), int(t), w] for lp, t, w in zip(c.logprobs, c.token_ids, words)]
    if request.return_routed_experts and c.routed_experts is not None:
        meta["routed_experts"] = encode_routed_experts(c.routed_experts)
    out: dict[str, Any] = {}
    if tokenizer is not None:
        ids = c.token_ids
        if c.finish_reason == "stop" and not decode["no_stop_trim"]:
            ids = ids[:-1]
        out["text"] = tokenizer.decode(ids, skip_special_tokens=decode["skip_special_tokens"])
    out["output_ids"] = [int(t) for t in c.token_ids]
    out["meta_info"] = meta
    return out


def format_response(parsed: ParsedGenerate, completions: list[list[Completion]], latency: float,
                    tokenizer=None) -> dict[str, Any] | list[dict[str, Any]]:
    """The whole `/generate` answer: a dict for one prompt with n == 1, else a flat prompt-major list."""
    samples = [format_sample(c, rid=rid if len(comps) == 1 else f"{rid}_{j}", request=req, decode=dec,
                             text_in_logprobs=parsed.text_in_logprobs, latency=latency, tokenizer=tokenizer)
               for req, rid, dec, comps in zip(parsed.requests, parsed.rids, parsed.decode, completions)
               for j, c in enumerate(comps)]
    return samples[0] if parsed.single else samples
