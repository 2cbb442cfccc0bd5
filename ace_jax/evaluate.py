"""Agent evaluation: per task, K agent steps from the root (draft, then debug / improve).

Metrics per task and overall: valid-submission rate (a valid submission within K steps),
any-medal rate, mean best hidden q, and steps to the first valid submission (K + 1 when none).
The policy answers each step's prompt: `TokenPolicy` through a rollout engine (embedded, or
SGLang's /generate) with a codec, `ChatPolicy` through an OpenAI-compatible chat endpoint.

`run_episodes` plays many (task, seed, temperature) episodes side by side on a rollout engine:
each agent step is one batched generate call and one batch of executions (through any
`execute(items)`, e.g. a worker pool behind the execution cache), so several seeds cost little
more than one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ace_jax.agent.codec import Codec
from rollout.engine import GenerateRequest, RolloutEngine, SamplingParams
from rollout.env.execute import StepResult, step as env_step
from rollout.env.prompts import build_prompt
from rollout.env.state import State
from rollout.env.tasks import Task
from rollout.openai_client import OpenAIChatClient
from rollout.sandbox.base import Limits, Sandbox

MEDAL_ORDER = ("gold", "silver", "bronze")
# mean_gain_after_draft: best q over the episode minus the draft's q (0 when invalid), what the
# agent's debug / improve steps add; 0 for one-step evaluations.
METRICS = ("valid_rate", "any_medal_rate", "mean_best_q", "mean_steps_to_first_valid", "mean_gain_after_draft")

# items as rollouts.collect builds them: (task, response, mode, truncated, limits, parent q)
Execute = Callable[[list], list[StepResult]]


@dataclasses.dataclass
class TaskEval:
    task: str
    valid: bool
    medal: str | None
    best_q: float
    first_valid_step: int | None
    steps: list[dict[str, Any]]


def _record(ev: TaskEval, i: int, state: State, result: StepResult) -> State:
    """Add agent step `i` (0-based) to `ev`; returns the next state (the step's child state)."""
    ev.steps.append({"step": i + 1, "operator": state.operator, "valid": result.valid, "reason": result.reason,
                     "q": result.q, "medal": result.medal, "code": result.code[:200]})
    if result.valid:
        ev.valid, ev.first_valid_step = True, ev.first_valid_step or i + 1
        ev.best_q = max(ev.best_q, result.q)
        if result.medal and (ev.medal is None or MEDAL_ORDER.index(result.medal) < MEDAL_ORDER.index(ev.medal)):
            ev.medal = result.medal
    return result.payload.to_state(state.depth + 1) if result.payload is not None else state


class Policy(Protocol):
    """Answers one agent step: the response text and whether it was cut off at max_new_tokens."""

    mode: str

    def respond(self, state: State, task: Task, *, temperature: float, max_new_tokens: int,
                seed: int) -> tuple[str, bool]: ...


class TokenPolicy:
    """A rollout engine on the codec's token ids (the embedded engine, or SGLang's /generate)."""

    def __init__(self, engine: RolloutEngine, codec: Codec):
        self.engine, self.codec, self.mode = engine, codec, codec.mode

    def respond(self, state: State, task: Task, *, temperature: float, max_new_tokens: int,
                seed: int) -> tuple[str, bool]:
        sampling = SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, min_p=0.0,
                                  max_new_tokens=max_new_tokens, stop_token_ids=self.codec.stop_ids, seed=seed)
        prompt = self.codec.encode_prompt(state, task)
        completion = self.engine.generate([GenerateRequest(prompt, sampling, n=1)])[0][0]
        return self.codec.decode_response(list(completion.token_ids)), completion.finish_reason == "length"


class ChatPolicy:
    """An OpenAI-compatible chat endpoint given the code-mode prompt's messages (ChatCodec's)."""

    mode = "code"

    def __init__(self, client: OpenAIChatClient, budget_tokens: int = 6000):
        self.client, self.budget_tokens = client, budget_tokens

    def respond(self, state: State, task: Task, *, temperature: float, max_new_tokens: int,
                seed: int) -> tuple[str, bool]:
        messages = build_prompt(state, task, budget_tokens=self.budget_tokens).messages()
        [choice] = self.client.chat(messages, max_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                                    seed=seed)
        return choice.text, choice.finish_reason == "length"


def evaluate_task(policy: Policy, task: Task, sandbox: Sandbox, *, steps: int, temperature: float,
                  max_new_tokens: int, limits: Limits, seed: int) -> TaskEval:
    """Run the agent loop on one task; the state after each step is the step's child state."""
    state, ev = State(task.id), TaskEval(task.id, False, None, 0.0, None, [])
    for i in range(steps):
        response, truncated = policy.respond(state, task, temperature=temperature, max_new_tokens=max_new_tokens,
                                             seed=seed + i)
        result = env_step(task, response, sandbox, mode=policy.mode, truncated=truncated, limits=limits,
                          parent_q=state.q)
        state = _record(ev, i, state, result)
    return ev


@dataclasses.dataclass(frozen=True)
class Episode:
    """One evaluation episode: a task, a sampling seed and temperature."""

    task_id: str
    seed: int = 0
    temperature: float = 0.0


def run_episodes(engine: RolloutEngine, codec: Codec, tasks: dict[str, Task], episodes: Sequence[Episode],
                 execute: Execute, *, steps: int, max_new_tokens: int, limits: Limits) -> list[TaskEval]:
    """Play every episode for `steps` agent steps, all episodes' step i in one batch."""
    states = [State(e.task_id) for e in episodes]
    evals = [TaskEval(e.task_id, False, None, 0.0, None, []) for e in episodes]
    for i in range(steps):
        requests = [GenerateRequest(codec.encode_prompt(s, tasks[e.task_id]), SamplingParams(
            temperature=e.temperature, top_p=1.0, top_k=-1, min_p=0.0, max_new_tokens=max_new_tokens,
            stop_token_ids=codec.stop_ids, seed=e.seed + i), n=1) for e, s in zip(episodes, states)]
        completions = [out[0] for out in engine.generate(requests)]
        items = [(tasks[e.task_id], codec.decode_response(list(c.token_ids)), codec.mode, c.finish_reason == "length",
                  limits, s.q) for e, s, c in zip(episodes, states, completions)]
        states = [_record(ev, i, s, r) for ev, s, r in zip(evals, states, execute(items))]
    return evals


def summarize(results: Sequence[TaskEval], steps: int) -> dict[str, float]:
    """The overall metrics of a set of task evaluations (one per task)."""
    return {
        "valid_rate": float(np.mean([r.valid for r in results])),
        "any_medal_rate": float(np.mean([r.medal is not None for r in results])),
        "mean_best_q": float(np.mean([r.best_q for r in results])),
        "mean_steps_to_first_valid": float(np.mean([r.first_valid_step or steps + 1 for r in results])),
        "mean_gain_after_draft": float(np.mean([r.best_q - draft_q(r) for r in results])),
    }


def _valid_draft(result: TaskEval) -> dict[str, Any] | None:
    """An episode's first step when it made a valid submission, else None."""
    first = result.steps[0] if result.steps else None
    return first if first is not None and first["valid"] else None


def draft_q(result: TaskEval) -> float:
    """q of an episode's first step, 0 when it made no valid submission (or never ran)."""
    first = _valid_draft(result)
    return float(first["q"]) if first is not None else 0.0


def draft_answer(result: TaskEval) -> str | None:
    """The first line of an episode's first valid submission's code (the spec in spec mode), None
    when its first step was not valid."""
    first = _valid_draft(result)
    code = first["code"].strip() if first is not None else ""
    return code.splitlines()[0] if code else None


def evaluate(policy: Policy, tasks: dict[str, Task], sandbox: Sandbox, *, steps: int = 4,
             temperature: float = 0.0, max_new_tokens: int = 64, limits: Limits = Limits(), seed: int = 0,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Every task (sorted by id) through the agent loop; the overall metrics and a per-task trace."""
    results = []
    for n, tid in enumerate(sorted(tasks)):
        r = evaluate_task(policy, tasks[tid], sandbox, steps=steps, temperature=temperature,
                          max_new_tokens=max_new_tokens, limits=limits, seed=seed)
        results.append(r)
        echo(f"[{n + 1}/{len(tasks)}] {tid}: valid {r.valid} medal {r.medal or '-'} best q {r.best_q:.3f} "
             f"first valid step {r.first_valid_step or '-'}")
    return {"tasks": len(results), "steps": steps, **summarize(results, steps),
            "per_task": [dataclasses.asdict(r) for r in results]}
