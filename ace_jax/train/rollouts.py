"""One round of rollouts: sampled states -> prompts -> G completions each -> sandboxed execution.

Returns a `RolloutRound` with per-group rewards and successes ([states, G]), the token data
the update batch needs, and the step results (child states for the buffer).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ace_jax.agent.codec import Codec
from rollout.engine import GenerateRequest, RolloutEngine, SamplingParams
from rollout.env.execute import StepResult, step as env_step
from rollout.env.state import State
from rollout.env.tasks import Task
from rollout.sandbox.base import Limits
from rollout.sandbox.pool import WorkerPool


@dataclasses.dataclass
class RolloutRound:
    entry_ids: np.ndarray                  # [S] buffer ids of the sampled states
    prompts: list[list[int]]               # [S] prompt token ids
    completions: list[list[list[int]]]     # [S][G] completion token ids
    logprobs: list[list[list[float]]]      # [S][G] engine logprobs per completion token
    results: list[list[StepResult]]        # [S][G]
    rewards: np.ndarray                    # [S, G]
    successes: np.ndarray                  # [S, G] bool
    truncated: np.ndarray                  # [S, G] bool


def _run_one(sandbox, slot: int, item) -> StepResult:
    task, response, mode, truncated, limits, parent_q = item
    return env_step(task, response, sandbox, mode=mode, truncated=truncated, slot=slot, limits=limits,
                    parent_q=parent_q)


class ExecutionCache:
    """Step results by (task, response, cut off, parent q): solution scripts are deterministic
    (fixed seeds), so a response seen before is not executed again. Bounded, oldest dropped."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self.entries: dict[tuple, StepResult] = {}
        self.hits = 0

    @staticmethod
    def key(item) -> tuple:
        task, response, mode, truncated, _limits, parent_q = item
        return (task.id, mode, response, bool(truncated), round(float(parent_q), 12))

    def run(self, pool: WorkerPool, items: list) -> list[StepResult]:
        keys = [self.key(it) for it in items]
        todo = {k: it for k, it in zip(keys, items) if k not in self.entries}
        for k, result in zip(todo, pool.map(_run_one, list(todo.values()))):
            self.entries[k] = result
        self.hits += len(items) - len(todo)
        results = [self.entries[k] for k in keys]
        while len(self.entries) > self.max_entries:
            self.entries.pop(next(iter(self.entries)))
        return results


class MissingLogprobs(RuntimeError):
    """The engine returned a completion without per-token logprobs (the importance weights need them)."""


def _engine_logprobs(completion) -> list[float]:
    if completion.logprobs is None or len(completion.logprobs) != len(completion.token_ids):
        got = None if completion.logprobs is None else len(completion.logprobs)
        raise MissingLogprobs(f"the engine returned {got} logprobs for a completion of {len(completion.token_ids)} "
                              "tokens; training needs one engine logprob per generated token")
    return [float(x) for x in completion.logprobs]


def collect(engine: RolloutEngine, pool: WorkerPool, codec: Codec, tasks: dict[str, Task],
            entry_ids: np.ndarray, states: Sequence[State], *, group_size: int, temperature: float,
            max_new_tokens: int, limits: Limits, seed: int, cache: ExecutionCache | None = None) -> RolloutRound:
    """Generate G completions per state with fully stated sampling, execute and grade them."""
    prompts = [codec.encode_prompt(s, tasks[s.task_id]) for s in states]
    sampling = [SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, min_p=0.0,
                               max_new_tokens=max_new_tokens, stop_token_ids=codec.stop_ids,
                               seed=seed * 100_003 + i * group_size) for i in range(len(states))]
    requests = [GenerateRequest(p, s, n=group_size, return_logprob=True) for p, s in zip(prompts, sampling)]
    outputs = engine.generate(requests)
    items, completions, logprobs, truncated = [], [], [], []
    for state, samples in zip(states, outputs):
        completions.append([list(c.token_ids) for c in samples])
        logprobs.append([_engine_logprobs(c) for c in samples])
        truncated.append([c.finish_reason == "length" for c in samples])
        for c in samples:
            items.append((tasks[state.task_id], codec.decode_response(list(c.token_ids)), codec.mode,
                          c.finish_reason == "length", limits, state.q))
    flat = cache.run(pool, items) if cache is not None else pool.map(_run_one, items)
    results = [flat[i * group_size:(i + 1) * group_size] for i in range(len(states))]
    rewards = np.array([[r.reward.reward for r in row] for row in results], np.float64).reshape(len(states), group_size)
    successes = np.array([[r.reward.success for r in row] for row in results], bool).reshape(len(states), group_size)
    return RolloutRound(np.asarray(entry_ids), prompts, completions, logprobs, results, rewards, successes,
                        np.array(truncated, bool).reshape(len(states), group_size))
