"""Agent evaluation: per task, K agent steps from the root (draft, then debug / improve).

Metrics per task and overall: valid-submission rate (a valid submission within K steps),
any-medal rate, mean best hidden q, and steps to the first valid submission (K + 1 when none).
The policy answers each step's prompt: `TokenPolicy` through a rollout engine (embedded, or
SGLang's /generate) with a codec, `ChatPolicy` through an OpenAI-compatible chat endpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import numpy as np

from ace_jax.agent.codec import Codec
from rollout.engine import GenerateRequest, RolloutEngine, SamplingParams
from rollout.env.execute import step as env_step
from rollout.env.prompts import build_prompt
from rollout.env.state import State
from rollout.env.tasks import Task
from rollout.openai_client import OpenAIChatClient
from rollout.sandbox.base import Limits, Sandbox

MEDAL_ORDER = ("gold", "silver", "bronze")


@dataclasses.dataclass
class TaskEval:
    task: str
    valid: bool
    medal: str | None
    best_q: float
    first_valid_step: int | None
    steps: list[dict[str, Any]]


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
    state, best_q, best_medal, first_valid, trace = State(task.id), 0.0, None, None, []
    for i in range(steps):
        response, truncated = policy.respond(state, task, temperature=temperature, max_new_tokens=max_new_tokens,
                                             seed=seed + i)
        result = env_step(task, response, sandbox, mode=policy.mode, truncated=truncated, limits=limits,
                          parent_q=state.q)
        trace.append({"step": i + 1, "operator": state.operator, "valid": result.valid, "reason": result.reason,
                      "q": result.q, "medal": result.medal, "code": result.code[:200]})
        if result.valid:
            first_valid = first_valid or i + 1
            best_q = max(best_q, result.q)
            if result.medal and (best_medal is None or MEDAL_ORDER.index(result.medal) < MEDAL_ORDER.index(best_medal)):
                best_medal = result.medal
        if result.payload is not None:
            state = result.payload.to_state(state.depth + 1)
    return TaskEval(task.id, first_valid is not None, best_medal, best_q, first_valid, trace)


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
    summary = {
        "tasks": len(results), "steps": steps,
        "valid_rate": float(np.mean([r.valid for r in results])),
        "any_medal_rate": float(np.mean([r.medal is not None for r in results])),
        "mean_best_q": float(np.mean([r.best_q for r in results])),
        "mean_steps_to_first_valid": float(np.mean([r.first_valid_step or steps + 1 for r in results])),
        "per_task": [dataclasses.asdict(r) for r in results],
    }
    return summary
