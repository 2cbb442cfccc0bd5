"""The metrics tasks are graded with, by name, with their direction and submission form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn import metrics as skm


@dataclass(frozen=True)
class Metric:
    """A grading metric: how to score, which way is better, what a submission holds."""

    name: str
    direction: str  # "maximize" | "minimize"
    kind: str  # "classification" | "regression"
    output: str  # "label" | "value" | "proba_positive" | "proba_columns"
    score: Callable[[np.ndarray, np.ndarray, tuple[str, ...]], float]


def _log_loss(y_true, proba, classes):
    proba = np.asarray(proba, dtype=float)
    proba = proba / proba.sum(axis=1, keepdims=True)
    return float(skm.log_loss(y_true, proba, labels=list(classes)))


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", "maximize", "classification", "label",
               lambda y, p, c: float(skm.accuracy_score(y, p))),
        Metric("f1_macro", "maximize", "classification", "label",
               lambda y, p, c: float(skm.f1_score(y, p, average="macro"))),
        Metric("roc_auc", "maximize", "classification", "proba_positive",
               lambda y, p, c: float(skm.roc_auc_score(np.asarray(y) == c[1], p))),
        Metric("log_loss", "minimize", "classification", "proba_columns", _log_loss),
        Metric("rmse", "minimize", "regression", "value",
               lambda y, p, c: float(skm.root_mean_squared_error(y, p))),
        Metric("mae", "minimize", "regression", "value",
               lambda y, p, c: float(skm.mean_absolute_error(y, p))),
    ]
}


def get_metric(name: str) -> Metric:
    """The metric called `name`; a clear error lists the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def aligned(direction: str, value: float) -> float:
    """The metric value with its sign flipped where lower is better, so higher is always better."""
    return value if direction == "maximize" else -value
