"""Supervised warm start before RL: a policy that never writes a valid answer gives GRPO only
zero-variance groups. Behaviour cloning on per-task targets: in spec mode a menu of
grammatical specs (good and bad ones alike, no task knowledge), standing in for the
pre-training a real model brings; in code mode the tasks' reference solutions rendered as
chat answers (the SFT start of an MLE agent). It reuses the update step: with advantage 1, no
importance weights and old = current logprobs, the PPO gradient is the log-likelihood gradient."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ace_jax.train.batch import make_batch
from rollout.env.reference_code import reference_responses
from rollout.env.spec import ESTIMATORS
from rollout.env.state import State
from rollout.env.tasks import Task

_GRID = {"int": (2, 8, 50), "float": (0.1, 1.0)}


def spec_menu(task: Task) -> list[str]:
    """Grammatical specs for `task`'s kind: each estimator bare and with one parameter set."""
    kind = task.config.kind
    menu = []
    for est in ESTIMATORS.values():
        if (est.classifier if kind == "classification" else est.regressor) is None:
            continue
        menu.append(f"model={est.name}")
        for p in est.params[:2]:
            values = p.choices if p.kind == "choice" else [v for v in _GRID[p.kind] if p.low <= v <= p.high]
            menu += [f"model={est.name} {p.name}={v:g}" if not isinstance(v, str) else f"model={est.name} {p.name}={v}"
                     for v in values]
    return menu


def warmstart_targets(codec, tasks: dict[str, Task]) -> dict[str, list[list[int]]]:
    """Completion ids to clone per task: the spec menu (spec mode) or reference answers (code mode)."""
    if codec.mode == "spec":
        texts = {t.id: spec_menu(t) for t in tasks.values()}
    else:
        texts = {t.id: reference_responses(t) for t in tasks.values()}
    empty = sorted(k for k, v in texts.items() if not v)
    if empty:
        raise ValueError(f"warm start: tasks {empty} have no {'specs' if codec.mode == 'spec' else 'reference solutions'}")
    return {k: [codec.encode_response(x) for x in v] for k, v in texts.items()}


def warm_start(step_fn, state, codec, tasks: dict[str, Task], *, steps: int, rows: int, buckets: tuple[int, ...],
               seed: int, max_new_tokens: int | None = None, place_batch: Callable | None = None,
               echo: Callable[[str], None] = print):
    """Run `steps` behaviour-cloning updates of `rows` (prompt, target) pairs; returns the state.
    Targets are cut to `max_new_tokens`: the policy never generates more."""
    rng = np.random.default_rng(seed)
    task_list = [tasks[k] for k in sorted(tasks)]
    targets = {k: [ids[:max_new_tokens] for ids in v] for k, v in warmstart_targets(codec, tasks).items()}
    prompts_by_task = {t.id: codec.encode_prompt(State(t.id), t) for t in task_list}
    for i in range(steps):
        picks = [task_list[j] for j in rng.integers(len(task_list), size=rows)]
        prompts = [prompts_by_task[t.id] for t in picks]
        completions = [targets[t.id][rng.integers(len(targets[t.id]))] for t in picks]
        batch = make_batch(prompts, completions, np.ones(rows, np.float32),
                           [[0.0] * len(c) for c in completions], pad_id=codec.pad_id, buckets=buckets)
        state, metrics = step_fn(state, place_batch(batch) if place_batch else jax.tree.map(jnp.asarray, batch))
        if (i + 1) % max(1, steps // 5) == 0 or i + 1 == steps:
            echo(f"warm start {i + 1}/{steps} | mean token logprob {-float(metrics['rollout_logprob_abs_diff']):.3f}")
    return state
