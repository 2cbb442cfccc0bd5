"""The rollout engine protocol and its data types, shared by the embedded JAX engine and SGLang.

`engine.generate(requests)` returns, for each request, its `n` completions in order. A
completion carries the generated token ids (a matched stop token included, as SGLang does),
the per-token logprobs of the temperature-scaled distribution before top-k / top-p / min-p
filtering, why it finished, and optionally the experts routed for every token the engine ran
through the model (routing replay).

Plain Python and NumPy only: this package imports no other project package.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

FINISH_REASONS = ("stop", "length", "abort")
# SGLang's /pause_generation modes: "abort" the requests in flight (answered with finish reason
# "abort"), or hold them ("retract": back to the waiting queue; "in_place": with their KV cache)
# until /continue_generation.
PAUSE_MODES = ("abort", "retract", "in_place")
# SGLang treats temperatures below this as greedy (top_k = 1, logprobs at temperature 1).
GREEDY_EPS = 1e-6


class EngineError(RuntimeError):
    """A request that could not be served; the message names the server, request and cause."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample. `top_k=-1` means all tokens; `temperature=0` means greedy.

    `seed` makes sampling reproducible: sample j of a request with seed s is the same across
    calls whatever else is in the batch (engines derive one random stream per (s, j)).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not self.temperature >= 0:
            raise ValueError(f"sampling 'temperature' must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling 'top_p' must be in (0, 1], got {self.top_p!r}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"sampling 'top_k' must be -1 (all) or >= 1, got {self.top_k!r}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"sampling 'min_p' must be in [0, 1], got {self.min_p!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling 'max_new_tokens' must be >= 1, got {self.max_new_tokens!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS

    def to_sglang(self) -> dict:
        """SGLang's `sampling_params` with every sampling field stated (no server defaults apply)."""
        out = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
               "min_p": self.min_p, "max_new_tokens": self.max_new_tokens,
               "stop_token_ids": list(self.stop_token_ids), "ignore_eos": self.ignore_eos}
        if self.seed is not None:
            out["sampling_seed"] = int(self.seed)
        return out


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """One prompt (token ids) to complete `n` times."""

    input_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    n: int = 1
    return_logprob: bool = True
    return_routed_experts: bool = False
    rid: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_ids", tuple(int(t) for t in self.input_ids))
        if not self.input_ids:
            raise ValueError("GenerateRequest 'input_ids' is empty")
        if self.n < 1:
            raise ValueError(f"GenerateRequest 'n' must be >= 1, got {self.n}")


@dataclasses.dataclass
class Completion:
    """One sample. `logprobs[i]` is the logprob of `token_ids[i]`.

    `routed_experts` is int32 [prompt_tokens + len(token_ids) - 1, moe_layers, top_k]: the
    experts chosen at every position the engine fed through the model (SGLang's layout; the
    last generated token is never fed).
    """

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    prompt_tokens: int
    routed_experts: np.ndarray | None = None
    weight_version: str | None = None
    matched_stop: int | None = None

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason {self.finish_reason!r} not in {FINISH_REASONS}")


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a rollout engine."""

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """For each request, its `n` completions (request order, then sample order)."""
        ...

    def update_weights_from_disk(self, path: str, weight_version: str | None = None) -> str:
        """Load new weights from a HF directory; returns the weight version now served."""
        ...

    def update_weights(self, params: Any, weight_version: str | None = None) -> str:
        """Serve a trainer's param tree (the JAX engine swaps it in place; SGLang exports it to a
        directory with the exporter it was given, then loads that). Returns the new version."""
        ...

    @property
    def returns_routed_experts(self) -> bool:
        """Whether completions carry `routed_experts` when a request asks (routing replay)."""
        ...

    def health(self) -> bool:
        ...

    def close(self) -> None:
        ...
