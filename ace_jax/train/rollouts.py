"""One round of rollouts: sampled states -> prompts -> G completions each -> sandboxed execution.

Returns a `RolloutRound` with per-group rewards and successes ([states, G]), the token data
the update batch needs, and the step results (child states for the buffer).
"""

from __future__ import annotations

import dataclasses
import threading
import time
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
    routed_experts: list[list[np.ndarray]] | None = None  # [S][G] engine routing, for routing replay
    executions: tuple[int, int] = (0, 0)   # sandbox executions started (all processes, this one)
    cached_executions: int = 0             # the execution cache's hits so far
    generate_s: float = 0.0                # wall time of the generation
    execute_s: float = 0.0                 # wall time of the executions and grading


def _run_one(sandbox, slot: int, item) -> StepResult:
    task, response, mode, truncated, limits, parent_q = item
    return env_step(task, response, sandbox, mode=mode, truncated=truncated, slot=slot, limits=limits,
                    parent_q=parent_q)


def at_least(seconds: float):
    """`_run_one` whose gradings last at least `seconds` (`env.min_execution_s`: stands in for real
    executions, which take minutes, so that overlapping them is measurable). Responses rejected
    before execution are delayed too, so a round's cost does not depend on the policy's current
    validity rate and runs of different policies compare at equal execution work."""
    if seconds <= 0:
        return _run_one

    def run(sandbox, slot: int, item) -> StepResult:
        started = time.monotonic()
        result = _run_one(sandbox, slot, item)
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        return result
    return run


class ExecutionCache:
    """Step results by (task, response, cut off, parent q): solution scripts are deterministic
    (fixed seeds), so a response seen before is not executed again. Bounded, oldest dropped."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self.entries: dict[tuple, StepResult] = {}
        self.hits = 0
        self._lock = threading.Lock()  # rounds may run at once (async)

    @staticmethod
    def key(item) -> tuple:
        task, response, mode, truncated, _limits, parent_q = item
        return (task.id, mode, response, bool(truncated), round(float(parent_q), 12))

    def run(self, pool: WorkerPool, items: list, run_one=_run_one) -> list[StepResult]:
        keys = [self.key(it) for it in items]
        with self._lock:
            known = {k: self.entries[k] for k in keys if k in self.entries}
        todo = {k: it for k, it in zip(keys, items) if k not in known}
        done = dict(zip(todo, pool.map(run_one, list(todo.values()))))
        with self._lock:
            self.entries.update(done)
            self.hits += len(items) - len(todo)
            while len(self.entries) > self.max_entries:
                self.entries.pop(next(iter(self.entries)))
        return [known[k] if k in known else done[k] for k in keys]


class MissingLogprobs(RuntimeError):
    """The engine returned a completion without per-token logprobs (the importance weights need them)."""


def _engine_logprobs(completion) -> list[float]:
    if completion.logprobs is None or len(completion.logprobs) != len(completion.token_ids):
        got = None if completion.logprobs is None else len(completion.logprobs)
        raise MissingLogprobs(f"the engine returned {got} logprobs for a completion of {len(completion.token_ids)} "
                              "tokens; training needs one engine logprob per generated token")
    return [float(x) for x in completion.logprobs]


@dataclasses.dataclass
class Generated:
    """A round's completions before execution: what `execute` needs to grade them."""
    entry_ids: np.ndarray
    prompts: list[list[int]]
    completions: list[list[list[int]]]
    logprobs: list[list[list[float]]]
    truncated: list[list[bool]]
    items: list[tuple]                     # one execution item per completion, in order
    routed_experts: list[list[np.ndarray]] | None
    generate_s: float = 0.0                # wall time of the generation
    step: int = 0                          # the round's step (which exchange its executions use)


def generate(engine: RolloutEngine, codec: Codec, tasks: dict[str, Task], entry_ids: np.ndarray,
             states: Sequence[State], *, group_size: int, temperature: float, max_new_tokens: int,
             limits: Limits, seed: int, routed: bool = False) -> Generated:
    """G completions per state with fully stated sampling (and the engine's routing with `routed`)."""
    started = time.perf_counter()
    prompts = [codec.encode_prompt(s, tasks[s.task_id]) for s in states]
    sampling = [SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, min_p=0.0,
                               max_new_tokens=max_new_tokens, stop_token_ids=codec.stop_ids,
                               seed=seed * 100_003 + i * group_size) for i in range(len(states))]
    requests = [GenerateRequest(p, s, n=group_size, return_logprob=True, return_routed_experts=routed)
                for p, s in zip(prompts, sampling)]
    outputs = engine.generate(requests)
    items, completions, logprobs, truncated = [], [], [], []
    for state, samples in zip(states, outputs):
        completions.append([list(c.token_ids) for c in samples])
        logprobs.append([_engine_logprobs(c) for c in samples])
        truncated.append([c.finish_reason == "length" for c in samples])
        for c in samples:
            items.append((tasks[state.task_id], codec.decode_response(list(c.token_ids)), codec.mode,
                          c.finish_reason == "length", limits, state.q))
    experts = [[c.routed_experts for c in samples] for samples in outputs] if routed else None
    return Generated(np.asarray(entry_ids), prompts, completions, logprobs, truncated, items, experts,
                     time.perf_counter() - started)


def execute(generated: Generated, pool: WorkerPool, *, group_size: int, cache: ExecutionCache | None = None,
            min_execution_s: float = 0.0) -> RolloutRound:
    """Execute and grade a generated round (each execution lasting at least `min_execution_s`)."""
    started = time.perf_counter()
    run_one, items, n = at_least(min_execution_s), generated.items, len(generated.prompts)
    flat = cache.run(pool, items, run_one) if cache is not None else pool.map(run_one, items)
    results = [flat[i * group_size:(i + 1) * group_size] for i in range(n)]
    rewards = np.array([[r.reward.reward for r in row] for row in results], np.float64).reshape(n, group_size)
    successes = np.array([[r.reward.success for r in row] for row in results], bool).reshape(n, group_size)
    return RolloutRound(generated.entry_ids, generated.prompts, generated.completions, generated.logprobs, results,
                        rewards, successes, np.array(generated.truncated, bool).reshape(n, group_size),
                        generated.routed_experts, generate_s=generated.generate_s,
                        execute_s=time.perf_counter() - started)


def collect(engine: RolloutEngine, pool: WorkerPool, codec: Codec, tasks: dict[str, Task],
            entry_ids: np.ndarray, states: Sequence[State], *, group_size: int, temperature: float,
            max_new_tokens: int, limits: Limits, seed: int, cache: ExecutionCache | None = None,
            routed: bool = False, min_execution_s: float = 0.0) -> RolloutRound:
    """`generate` then `execute`: one synchronous round."""
    generated = generate(engine, codec, tasks, entry_ids, states, group_size=group_size, temperature=temperature,
                         max_new_tokens=max_new_tokens, limits=limits, seed=seed, routed=routed)
    return execute(generated, pool, group_size=group_size, cache=cache, min_execution_s=min_execution_s)
