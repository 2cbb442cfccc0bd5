"""A client for any OpenAI-compatible `/v1/chat/completions` endpoint (ace-jax serve, SGLang, vLLM, OpenAI).

Agents that only have text in and text out (no token ids) are driven through it: `chat(messages)`
returns each choice's text, why it finished and the tokens billed. Only standard OpenAI fields
are sent, so it works against any such endpoint. Transport failures and 5xx answers are retried
(rollout.http_client); a 4xx answer raises with the endpoint's error message.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from rollout.engine import EngineError
from rollout.http_client import BadResponse, HttpClient

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls")


@dataclasses.dataclass(frozen=True)
class ChatChoice:
    text: str
    finish_reason: str
    completion_tokens: int | None   # the whole answer's, on its first choice only (usage is per answer)


class OpenAIChatClient:
    """Chat completions against `base_url` (with or without the trailing `/v1`)."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout_s: float = 3600.0, retries: int = 3):
        """`model` (checked against `GET /v1/models`) defaults to the first listed; `api_key` to
        $OPENAI_API_KEY."""
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else f"{base}/v1"
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.http = HttpClient(timeout_s=timeout_s, retries=retries,
                               headers={"Authorization": f"Bearer {key}"} if key else None)
        served = self.models()
        if model is not None and model not in served:
            raise EngineError(f"{self.base_url} does not serve model {model!r}; it serves {served[:20]}")
        self.model = model or served[0]

    def models(self) -> list[str]:
        """The model ids the endpoint serves."""
        answer = self.http.request("GET", f"{self.base_url}/models", timeout_s=60.0)
        ids = [m.get("id") for m in answer.get("data", [])] if isinstance(answer, dict) else []
        if not ids or not all(isinstance(i, str) for i in ids):
            raise BadResponse(f"GET {self.base_url}/models listed no model ids: {str(answer)[:200]}")
        return ids

    def chat(self, messages: Sequence[dict[str, Any]], *, max_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, seed: int | None = None, n: int = 1) -> list[ChatChoice]:
        """The `n` choices for `messages`, in index order."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens,
                                "temperature": temperature, "top_p": top_p, "n": n}
        if seed is not None:
            body["seed"] = int(seed)
        url = f"{self.base_url}/chat/completions"
        answer = self.http.request("POST", url, body)
        return parse_chat(answer, n, url)

    def close(self) -> None:
        self.http.close()


def parse_chat(answer: Any, n: int, url: str = "server") -> list[ChatChoice]:
    """The choices of a chat completion; a clear error when the answer is not one."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        raise BadResponse(f"{url}: expected {n} choice(s) in the chat completion, got {str(answer)[:200]}")
    usage = answer.get("usage") or {}
    out = []
    for i, choice in enumerate(sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)):
        message = choice.get("message") if isinstance(choice, dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        reason = choice.get("finish_reason")
        if not isinstance(text, str) and text is not None:
            raise BadResponse(f"{url}: choice {i} has no message content: {str(choice)[:200]}")
        if reason not in FINISH_REASONS:
            raise EngineError(f"{url}: choice {i} finished with {reason!r}, not one of {list(FINISH_REASONS)}")
        tokens = usage.get("completion_tokens") if i == 0 else None
        out.append(ChatChoice(text or "", reason, tokens if isinstance(tokens, int) else None))
    return out
