"""Supervised warm start before RL: a policy that never writes a valid answer gives GRPO only
zero-variance groups. Behaviour cloning on per-task targets: in spec mode a menu of
grammatical specs (good and bad ones alike, no task knowledge), standing in for the
pre-training a real model brings; in code mode the tasks' reference solutions rendered as
chat answers (the SFT start of an MLE agent). With `child_share` > 0 that share of the rows asks
from a made-up child state (a parent answer from the same menu, with a valid result or a failure
reason) instead of the root: the prompt forms of the curriculum's children (`op improve`,
`op debug`), which a warm start on roots alone never shows a policy. It reuses the update step:
with advantage 1, no importance weights and old = current logprobs, the PPO gradient is the
log-likelihood gradient.

The warm start has its own optimizer (`warmstart_optimizer`: the same AdamW at a constant
learning rate) and its own moments: only its parameters pass on to RL, whose optimizer then
starts fresh, at step 0 of the warmup and cosine schedule sized for `train.steps`."""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ace_jax.train.batch import make_batch
from ace_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from ace_jax.train.state import TrainState
from rollout.env.reference_code import reference_responses
from rollout.env.spec import ESTIMATORS
from rollout.env.spec_vocab import SAMPLE_REASONS
from rollout.env.state import Feedback, State
from rollout.env.tasks import Task

_GRID = {"int": (2, 8, 50), "float": (0.1, 1.0)}


class WarmStartOptimizer(NamedTuple):
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule


def warmstart_optimizer(rl: OptimizerConfig, steps: int, learning_rate: float = 0.0) -> WarmStartOptimizer:
    """The warm start's own AdamW: the RL settings at a constant learning rate (no warmup, no decay),
    `learning_rate` when it is > 0 (`train.warmstart_learning_rate`), else the RL one. Its state
    tree has the RL optimizer's structure, so the same sharding places it."""
    if learning_rate < 0:
        raise ValueError(f"train.warmstart_learning_rate must be >= 0 (0: optimizer.learning_rate), got {learning_rate}")
    cfg = dataclasses.replace(rl, warmup_steps=0, total_steps=max(int(steps), 1), min_lr_ratio=1.0,
                              learning_rate=learning_rate or rl.learning_rate)
    return WarmStartOptimizer(make_optimizer(cfg), learning_rate_schedule(cfg))


def warmstart_state(rl_state: TrainState, optimizer: optax.GradientTransformation) -> TrainState:
    """A train state for the warm start: the RL state's parameters with fresh moments of `optimizer`.
    The update step donates its input, so everything but the parameters (which the warm start's
    replace) is a copy: the RL state's own arrays stay alive."""
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    return TrainState(params=rl_state.params, opt_state=optimizer.init(rl_state.params),
                      step=jnp.zeros_like(rl_state.step), rng=copy(rl_state.rng), skipped=copy(rl_state.skipped),
                      ref_params=None if rl_state.ref_params is None else copy(rl_state.ref_params))


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


def warmstart_texts(codec, tasks: dict[str, Task]) -> dict[str, list[str]]:
    """Answers to clone per task: the spec menu (spec mode) or reference answers (code mode)."""
    if codec.mode == "spec":
        texts = {t.id: spec_menu(t) for t in tasks.values()}
    else:
        texts = {t.id: reference_responses(t) for t in tasks.values()}
    empty = sorted(k for k, v in texts.items() if not v)
    if empty:
        raise ValueError(f"warm start: tasks {empty} have no {'specs' if codec.mode == 'spec' else 'reference solutions'}")
    return texts


def made_up_child(task: Task, parent_answer: str, rng: np.random.Generator) -> State:
    """A child state of `task` for the warm start's prompts: `parent_answer` as its code, with a
    valid result and a random validation value (3 in 4) or a failure reason. Format only: the
    values are random, so the warm start learns no task's scores."""
    if rng.random() < 0.75:
        feedback = Feedback(True, "", validation_metric=round(float(rng.random()), 4))
    else:
        feedback = Feedback(False, SAMPLE_REASONS[rng.integers(len(SAMPLE_REASONS))])
    return State(task.id, parent_answer, feedback, depth=1)


def warm_start(step_fn, state, codec, tasks: dict[str, Task], *, steps: int, rows: int, buckets: tuple[int, ...],
               seed: int, max_new_tokens: int | None = None, place_batch: Callable | None = None,
               echo: Callable[[str], None] = print, child_share: float = 0.0):
    """Run `steps` behaviour-cloning updates of `rows` (prompt, target) pairs; returns the state.
    Targets are cut to `max_new_tokens`: the policy never generates more. A `child_share` of the
    rows (`train.warmstart_child_share`) prompt from a made-up child state instead of the root."""
    if not 0.0 <= child_share <= 1.0:
        raise ValueError(f"train.warmstart_child_share must be in [0, 1], got {child_share}")
    rng = np.random.default_rng(seed)
    task_list = [tasks[k] for k in sorted(tasks)]
    texts = warmstart_texts(codec, tasks)
    targets = {k: [codec.encode_response(x)[:max_new_tokens] for x in v] for k, v in texts.items()}
    prompts_by_task = {t.id: codec.encode_prompt(State(t.id), t) for t in task_list}

    def prompt(task: Task) -> list[int]:
        if child_share and rng.random() < child_share:
            parent = texts[task.id][rng.integers(len(texts[task.id]))]
            return codec.encode_prompt(made_up_child(task, parent, rng), task)
        return prompts_by_task[task.id]

    for i in range(steps):
        picks = [task_list[j] for j in rng.integers(len(task_list), size=rows)]
        prompts = [prompt(t) for t in picks]
        completions = [targets[t.id][rng.integers(len(targets[t.id]))] for t in picks]
        batch = make_batch(prompts, completions, np.ones(rows, np.float32),
                           [[0.0] * len(c) for c in completions], pad_id=codec.pad_id, buckets=buckets)
        state, metrics = step_fn(state, place_batch(batch) if place_batch else jax.tree.map(jnp.asarray, batch))
        if (i + 1) % max(1, steps // 5) == 0 or i + 1 == steps:
            echo(f"warm start {i + 1}/{steps} | mean token logprob {-float(metrics['rollout_logprob_abs_diff']):.3f}")
    return state
