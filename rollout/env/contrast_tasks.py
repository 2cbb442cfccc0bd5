"""The `contrast` task suite: tasks whose best answer depends on the task.

On the core built-in tasks one spec is nearly every task's best (`ace-jax tasks headroom`: one
spec for all held-out tasks gets mean q 0.966), so a policy that never reads the task scores
almost as well as one that does, and the curriculum cannot matter. This suite has two families
per kind, told apart by what the spec prompt shows (the feature count):
- wide and linear: 300 rows, 200 numeric features, a linear signal spread over 60 of them.
  Linear models and the RBF SVM win; trees and nearest neighbours are near the baseline.
- narrow and axis-aligned: 1500 rows, 8 numeric features, a parity or step function of a few
  thresholds. Boosted trees and forests win; linear models are at the baseline.
Every family has the same metric per kind (accuracy, rmse), so only the data tells them apart.
Task ids are neutral (`contrast_NN`): the id says nothing about the family. Training tasks are
two seeds of each family and kind; held-out tasks a third seed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from rollout.env.builtin_tasks import BuiltinTask

# Bump when a definition below changes: prepared tasks carry this version.
CONTRAST_VERSION = 1

WIDE_ROWS, WIDE_FEATURES, WIDE_INFORMATIVE = 300, 200, 60
NARROW_ROWS, NARROW_FEATURES = 1500, 8
Maker = Callable[[], tuple[pd.DataFrame, pd.Series]]


def _frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])])


def _wide_signal(rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(WIDE_ROWS, WIDE_FEATURES))
    w = np.zeros(WIDE_FEATURES)
    w[:WIDE_INFORMATIVE] = rng.normal(size=WIDE_INFORMATIVE)
    z = x @ w
    return x, z + 0.3 * z.std() * rng.normal(size=WIDE_ROWS)


def wide_classification(seed: int) -> Maker:
    """A linear decision boundary over 60 of 200 features (labels from a noisy linear score)."""
    def make():
        x, score = _wide_signal(np.random.RandomState(seed))
        return _frame(x), pd.Series((score > 0).astype(int))
    return make


def wide_regression(seed: int) -> Maker:
    """A noisy linear target over 60 of 200 features."""
    def make():
        x, score = _wide_signal(np.random.RandomState(seed))
        return _frame(x), pd.Series(score)
    return make


def _narrow_features(seed: int) -> tuple[np.random.RandomState, np.ndarray]:
    rng = np.random.RandomState(seed)
    return rng, rng.normal(size=(NARROW_ROWS, NARROW_FEATURES))


def narrow_classification(seed: int) -> Maker:
    """The parity of three features' signs, among 8 features, with 5 % of labels flipped."""
    def make():
        rng, x = _narrow_features(seed)
        y = np.bitwise_xor.reduce((x[:, :3] > 0).astype(int), axis=1)
        return _frame(x), pd.Series(np.where(rng.rand(NARROW_ROWS) < 0.05, 1 - y, y))
    return make


def narrow_regression(seed: int) -> Maker:
    """A step function of four thresholds (an xor and an and), among 8 features, with noise."""
    def make():
        rng, x = _narrow_features(seed)
        y = 3.0 * ((x[:, 0] > 0) ^ (x[:, 1] > 0.5)) + 2.0 * ((x[:, 2] > -0.3) & (x[:, 3] > 0))
        return _frame(x), pd.Series(y + 0.3 * rng.normal(size=NARROW_ROWS))
    return make


_WIDE_REFS = {"classification": ("model=logreg C=1.0", "model=svm C=1.0", "model=mlp"),
              "regression": ("model=ridge alpha=1.0", "model=lasso alpha=0.1", "model=svm C=30")}
_NARROW_REFS = ("model=rf", "model=gbm", "model=knn k=5")
_BLURBS = {
    ("wide", "classification"): "Binary classification from 200 numeric measurements on 300 rows.",
    ("wide", "regression"): "Predict a numeric target from 200 numeric measurements on 300 rows.",
    ("narrow", "classification"): "Binary classification from 8 numeric measurements on 1500 rows.",
    ("narrow", "regression"): "Predict a numeric target from 8 numeric measurements on 1500 rows.",
}
_MAKERS = {("wide", "classification"): wide_classification, ("wide", "regression"): wide_regression,
           ("narrow", "classification"): narrow_classification, ("narrow", "regression"): narrow_regression}
_METRICS = {"classification": "accuracy", "regression": "rmse"}


def _suite() -> tuple[tuple[BuiltinTask, ...], dict[str, str]]:
    """The tasks and each task's family. Ids run train, train, held-out rounds, each round wide then
    narrow, classification then regression; task i (from 0) of round r draws its data with seed
    r + 10 * i."""
    tasks, families = [], {}
    for round_, split in enumerate(("train", "train", "heldout")):
        for family in ("wide", "narrow"):
            for kind in ("classification", "regression"):
                refs = _WIDE_REFS[kind] if family == "wide" else _NARROW_REFS
                task_id = f"contrast_{len(tasks) + 1:02d}"
                tasks.append(BuiltinTask(task_id, split, _METRICS[kind], "target",
                                         _MAKERS[family, kind](round_ + 10 * len(tasks)), refs,
                                         _BLURBS[family, kind]))
                families[task_id] = family
    return tuple(tasks), families


CONTRAST_TASKS, _FAMILIES = _suite()


def contrast_family(task_id: str) -> str:
    """`wide` or `narrow`: which family a contrast task belongs to (for reports)."""
    return _FAMILIES[task_id]
