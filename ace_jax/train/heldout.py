"""Held-out evaluation inside a run: the `ace-jax eval` metrics, greedily and as the policy
acts in training (several seeds at the training temperature, mean and spread).

`evaluate_policy` plays every (task, seed) episode side by side through the run's engine,
worker pool and execution cache. `HeldoutTracker` measures a run before its first RL step
(after the warm start) and at its end, keeps both in `heldout.json` (so a resumed run keeps
its "before") and formats the before/after table.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from ace_jax.evaluate import METRICS, Episode, Execute, draft_answer, run_episodes, summarize
from ace_jax.train.rollouts import _run_one

HELDOUT_FILE = "heldout.json"
_SEED_STRIDE = 7919


def pool_executor(pool, cache=None) -> Execute:
    """Items through the execution cache when there is one, else straight to the pool.
    Evaluations run between training steps, so the pool's execution counts (`take_counts`,
    the per-step `executions` metric) are emptied after each batch: they are no step's."""
    def execute(items: list) -> list:
        results = cache.run(pool, items) if cache is not None else pool.map(_run_one, items)
        if hasattr(pool, "take_counts"):
            pool.take_counts()
        return results
    return execute


def spread(values: list[float]) -> dict[str, float]:
    """Mean and standard deviation (ddof 0) of per-seed values."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def evaluate_policy(engine, codec, tasks: dict, execute: Execute, *, steps: int, seeds: int, temperature: float,
                    max_new_tokens: int, limits, seed: int = 0) -> dict[str, Any]:
    """Greedy metrics, and per metric the mean and spread over `seeds` sampled evaluations."""
    ids = sorted(tasks)
    episodes = [Episode(t) for t in ids] + [Episode(t, seed + _SEED_STRIDE * (s + 1), temperature)
                                            for s in range(seeds) for t in ids]
    evals = run_episodes(engine, codec, tasks, episodes, execute, steps=steps, max_new_tokens=max_new_tokens,
                         limits=limits)
    n = len(ids)
    per_seed = [summarize(evals[n * (s + 1):n * (s + 2)], steps) for s in range(seeds)]
    return {"tasks": n, "steps": steps, "seeds": seeds, "temperature": temperature,
            "greedy": summarize(evals[:n], steps),
            "sampled": {m: spread([p[m] for p in per_seed]) for m in METRICS} if seeds else {},
            "per_task_greedy": {e.task: {"valid": e.valid, "best_q": e.best_q, "medal": e.medal,
                                         "draft": draft_answer(e)} for e in evals[:n]}}


def format_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A plain-text before/after table of every metric, greedy and sampled (mean ± std)."""
    w = 44
    rows = [f"{'held-out metric':{w}s} {'before':>15s} {'after':>15s} {'change':>8s}"]
    for m in METRICS:
        b, a = before["greedy"][m], after["greedy"][m]
        rows.append(f"{m + ' (greedy)':{w}s} {b:15.3f} {a:15.3f} {a - b:+8.3f}")
    for m in METRICS if before.get("sampled") and after.get("sampled") else ():
        b, a = before["sampled"][m], after["sampled"][m]
        label = f"{m} (T={after['temperature']:g}, {after['seeds']} seeds)"
        rows.append(f"{label:{w}s} {b['mean']:7.3f} ± {b['std']:.3f} {a['mean']:7.3f} ± {a['std']:.3f} "
                    f"{a['mean'] - b['mean']:+8.3f}")
    return "\n".join(rows)


class HeldoutTracker:
    """Before/after held-out evaluation of one run directory."""

    def __init__(self, run_dir: str, evaluate: Callable[[], dict[str, Any]], write: bool = True):
        self.path = os.path.join(run_dir, HELDOUT_FILE)
        self.evaluate, self.write = evaluate, write   # multi-host: every process evaluates, one writes
        self.results: dict[str, Any] = {}
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.results = json.load(f)

    def measure(self, which: str) -> dict[str, Any]:
        """Evaluate now and record it as `which` ("before" or "after")."""
        if which not in ("before", "after"):
            raise ValueError(f"held-out evaluation is 'before' or 'after', got {which!r}")
        self.results[which] = self.evaluate()
        if self.write:
            with open(self.path, "w") as f:
                json.dump(self.results, f, indent=2)
        return self.results[which]

    def table(self) -> str:
        if "before" not in self.results or "after" not in self.results:
            return ""
        return format_table(self.results["before"], self.results["after"])

    def summary(self) -> dict[str, Any]:
        """`heldout_before` / `heldout_after` for summary.json (the per-task detail stays in heldout.json)."""
        return {f"heldout_{k}": {kk: vv for kk, vv in v.items() if kk != "per_task_greedy"}
                for k, v in self.results.items()}


def heldout_tracker(trainer) -> HeldoutTracker:
    """The tracker of a `Trainer`: its engine, codec, worker pool and execution cache, the tasks
    and settings of `train.heldout_*`, sampling at `rollout.temperature`."""
    from ace_jax.train.loop import select_tasks

    cfg = trainer.cfg
    tasks = select_tasks(cfg.train.heldout_tasks)
    execute = pool_executor(trainer.pool, trainer.exec_cache)

    def evaluate() -> dict[str, Any]:
        trainer.echo(f"held-out evaluation at step {trainer.step}: {len(tasks)} tasks x (greedy + "
                     f"{cfg.train.heldout_seeds} seeds at T={cfg.rollout.temperature:g}), {cfg.train.heldout_steps} agent steps")
        return evaluate_policy(trainer.engine, trainer.codec, tasks, execute, steps=cfg.train.heldout_steps,
                               seeds=cfg.train.heldout_seeds, temperature=cfg.rollout.temperature,
                               max_new_tokens=cfg.rollout.max_new_tokens, limits=trainer.limits, seed=cfg.train.seed)
    return HeldoutTracker(trainer.run_dir, evaluate, write=getattr(trainer, "writer", True))
