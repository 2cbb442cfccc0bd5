"""JSON over HTTP with timeouts, retries with exponential backoff, and errors that say what broke.

Transport failures (refused, reset, timed out, truncated body) and 5xx answers are retried;
4xx answers and bodies that are not the JSON expected are not (they would fail again).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import httpx

from rollout.engine import EngineError


class ServerUnreachable(EngineError):
    """No usable answer after the retries: the server is down, hung, or cut the answer short."""


class BadResponse(EngineError):
    """The server answered, but not with what the API promises (status, JSON, fields)."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return f"connection refused or failed ({exc})"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"truncated or invalid HTTP response ({exc})"
    return f"{type(exc).__name__}: {exc}"


class HttpClient:
    """Thread-safe JSON client shared by every request to one or more servers."""

    def __init__(self, *, timeout_s: float = 3600.0, connect_timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 10.0, max_connections: int = 64,
                 headers: dict[str, str] | None = None):
        """`headers` go with every request (e.g. an API key's Authorization)."""
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s), headers=headers,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    def close(self) -> None:
        self._client.close()

    def backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt)

    def once(self, method: str, url: str, payload: Any = None, timeout_s: float | None = None) -> httpx.Response:
        """One HTTP exchange; transport errors propagate as httpx exceptions."""
        kwargs: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        if payload is not None:
            kwargs["json"] = payload
        return self._client.request(method, url, **kwargs)

    def request(self, method: str, url: str, payload: Any = None, *, timeout_s: float | None = None,
                on_failure: Callable[[Exception, int], None] | None = None, expect_json: bool = True) -> Any:
        """Send with retries; returns the decoded JSON (or the text when `expect_json` is False).

        `on_failure(exc, attempt)` runs after each retryable failure (e.g. to restart a dead
        server); it may raise to stop retrying."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff(attempt - 1))
            try:
                response = self.once(method, url, payload, timeout_s)
            except httpx.TransportError as exc:
                last = exc
                if on_failure is not None:
                    on_failure(exc, attempt)
                continue
            if response.status_code >= 500:
                last = BadResponse(f"{method} {url} answered HTTP {response.status_code}: {response.text[:500]}")
                if on_failure is not None:
                    on_failure(last, attempt)
                continue
            if response.status_code >= 400:
                raise BadResponse(f"{method} {url} answered HTTP {response.status_code}: {response.text[:500]}")
            return decode_json(response, method, url) if expect_json else response.text
        reason = _describe(last) if not isinstance(last, EngineError) else str(last)
        raise ServerUnreachable(f"{method} {url} failed after {self.retries + 1} attempts: {reason}")


def decode_json(response: httpx.Response, method: str, url: str) -> Any:
    try:
        return json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadResponse(f"{method} {url} answered HTTP {response.status_code} with a body that is not "
                          f"JSON ({exc}): {response.content[:200]!r}") from exc
