"""Target-free views of an ablation's learning curves, for when a fixed target says nothing.

A fixed target that no run reaches within the budget makes every arm's steps to target the same
censored number, so the ratio between arms reads 1.00 whatever the curves did. Two views that
need no target chosen per arm:

- steps to a share of the gain: the targets lie a fixed share of the way from where every arm
  starts (the mean of the metric at step 0 over all runs: the arms of a seed share its warm
  start) to the best arm's final mean. They are set from all arms at once, the same for each.
- the curve mean: the metric's mean over the evaluation points after step 0, the area under
  the learning curve per step. It is never censored.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

GAIN_SHARES = (0.5, 0.8)


def lower_is_better(name: str) -> bool:
    """Steps to first valid falls as a policy gets better; every other metric rises."""
    return name.endswith("mean_steps_to_first_valid")


def metric_value(evaluation: dict[str, Any], name: str) -> float:
    """`set.kind.metric` of one fixed evaluation (sampled metrics: their mean over seeds)."""
    s, kind, metric = name.split(".")
    value = evaluation[s][kind][metric]
    return float(value["mean"] if kind == "sampled" else value)


def _value(point: dict[str, Any], name: str) -> float:
    return metric_value(point["eval"], name)


def gain_targets(runs: Sequence[Sequence[dict[str, Any]]], name: str,
                 shares: Sequence[float] = GAIN_SHARES) -> dict[float, float]:
    """{share: target}: `share` of the way from the step-0 mean of all runs to the best arm's
    final mean (runs are the evaluation points of each (arm, seed), in step order)."""
    runs = [r for r in runs if r]
    if not runs:
        return {}
    start = float(np.mean([_value(r[0], name) for r in runs]))
    finals: dict[str, list[float]] = {}
    for r in runs:
        finals.setdefault(r[-1]["arm"], []).append(_value(r[-1], name))
    means = [float(np.mean(v)) for v in finals.values()]
    best = min(means) if lower_is_better(name) else max(means)
    return {float(s): start + float(s) * (best - start) for s in shares}


def curve_mean(run: Sequence[dict[str, Any]], name: str) -> float:
    """The metric's mean over a run's evaluation points after step 0 (its step-0 value alone if
    it has no other)."""
    later = [p for p in run if p["step"] > 0] or list(run)
    return float(np.mean([_value(p, name) for p in later]))
