"""The built-in tasks: scikit-learn's bundled datasets and generators, made into MLE tasks.

Each entry fixes how its data is made (seeded), its metric, its split (train / heldout) and
three reference solutions (specs). Preparation (`rollout.env.prepare`) also runs a small
hyperparameter search (`TUNING_GRID`, the specs of the task's kind): like a Kaggle
leaderboard, the search and the references are the "teams", the best of them sets the
reference score (q = 1) and the medal thresholds follow Kaggle's rank rules, so a first
valid attempt leaves headroom. The sample submission (a constant prediction) is scored as
the trivial baseline (q = 0).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from sklearn import datasets

# Bump when a definition below changes: prepared tasks carry this version.
BUILTIN_VERSION = 2

# The preparation-time hyperparameter search, per task kind (see the module doc).
TUNING_GRID: dict[str, tuple[str, ...]] = {
    "classification": (
        "model=logreg C=0.1", "model=logreg C=10", "model=svm C=1", "model=svm C=10", "model=svm C=3 gamma=auto",
        "model=rf n_estimators=300 max_features=0.3", "model=rf n_estimators=300 min_samples_leaf=3",
        "model=extratrees n_estimators=300", "model=gbm max_depth=3 lr=0.05 max_iter=300",
        "model=gbm max_depth=6 lr=0.1 max_iter=200", "model=gbm max_depth=4 lr=0.05 max_iter=400 l2=1",
        "model=knn k=10 weights=distance", "model=knn k=30 weights=distance",
        "model=mlp hidden=128 alpha=0.01 max_iter=500", "model=mlp hidden=64 alpha=1 max_iter=500", "model=nb"),
    "regression": (
        "model=ridge alpha=0.1", "model=ridge alpha=10", "model=lasso alpha=0.1", "model=lasso alpha=1",
        "model=svm C=30", "model=svm C=300", "model=rf n_estimators=300 max_features=0.5",
        "model=rf n_estimators=300 min_samples_leaf=3", "model=extratrees n_estimators=300",
        "model=gbm max_depth=3 lr=0.05 max_iter=300", "model=gbm max_depth=6 lr=0.1 max_iter=200",
        "model=gbm max_depth=4 lr=0.05 max_iter=400 l2=1", "model=knn k=10 weights=distance",
        "model=knn k=30 weights=distance", "model=mlp hidden=128 alpha=0.01 max_iter=500",
        "model=mlp hidden=64 alpha=1 max_iter=500"),
}


@dataclass(frozen=True)
class BuiltinTask:
    """How to make one built-in task."""

    id: str
    split: str
    metric: str
    target: str
    make: Callable[[], tuple[pd.DataFrame, pd.Series]]
    references: tuple[str, str, str]
    blurb: str


def _snake(name: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in name.lower())
    return "_".join(p for p in out.split("_") if p)


def _bunch(loader, n_noise: int = 0) -> Callable[[], tuple[pd.DataFrame, pd.Series]]:
    def make():
        b = loader()
        x = pd.DataFrame(b.data, columns=[_snake(n) for n in b.feature_names])
        noise = np.random.RandomState(1).normal(size=(len(x), n_noise)) * x.to_numpy().std()
        for i in range(n_noise):
            x[f"noise{i}"] = noise[:, i]
        return x, pd.Series(b.target)
    return make


def _digits():
    b = datasets.load_digits()
    return pd.DataFrame(b.data, columns=[f"px{i}" for i in range(b.data.shape[1])]), pd.Series(b.target)


def _generated(fn, n_noise: int = 0, **kwargs) -> Callable[[], tuple[pd.DataFrame, pd.Series]]:
    def make():
        x, y = fn(random_state=0, **kwargs)
        if n_noise:
            noise = np.random.RandomState(1).normal(size=(len(x), n_noise))
            x = np.hstack([x, noise])
        return pd.DataFrame(x, columns=[f"x{i}" for i in range(x.shape[1])]), pd.Series(y)
    return make


def _mixed():
    """Numeric and categorical features with missing values."""
    x, y = datasets.make_classification(n_samples=1500, n_features=10, n_informative=6, n_redundant=1,
                                        flip_y=0.03, random_state=0)
    rng = np.random.RandomState(2)
    frame = pd.DataFrame(x[:, 3:], columns=[f"num{i}" for i in range(7)])
    letters = np.array(list(string.ascii_lowercase[:6]))
    for i in range(3):  # informative columns binned into letter categories
        bins = np.quantile(x[:, i], np.linspace(0, 1, 7)[1:-1])
        frame[f"cat{i}"] = letters[np.digitize(x[:, i], bins)]
    for col in frame.columns:
        frame.loc[rng.rand(len(frame)) < 0.05, col] = np.nan
    return frame, pd.Series(y)


BUILTIN_TASKS: tuple[BuiltinTask, ...] = (
    BuiltinTask("iris", "train", "accuracy", "species", _bunch(datasets.load_iris, n_noise=8),
                ("model=svm C=1.0", "model=logreg C=1.0", "model=tree max_depth=2"),
                "Classify iris flowers into three species from four measurements (Fisher's iris data), "
                "among eight columns of noise."),
    BuiltinTask("wine", "train", "log_loss", "cultivar", _bunch(datasets.load_wine),
                ("model=logreg C=0.3", "model=rf n_estimators=100", "model=knn k=15 weights=distance"),
                "Predict which of three cultivars a wine comes from, from 13 chemical measurements."),
    BuiltinTask("breast_cancer", "train", "roc_auc", "diagnosis", _bunch(datasets.load_breast_cancer),
                ("model=logreg C=0.3", "model=rf n_estimators=100", "model=knn k=5"),
                "Predict whether a breast mass is benign (1) or malignant (0) from 30 features of a cell image."),
    BuiltinTask("digits", "heldout", "accuracy", "digit", _digits,
                ("model=svm C=10", "model=knn k=3", "model=logreg C=0.05"),
                "Recognize handwritten digits (0-9) from 8x8 grey-level images given as 64 pixel columns."),
    BuiltinTask("diabetes", "train", "mae", "progression", _bunch(datasets.load_diabetes),
                ("model=ridge alpha=1.0", "model=gbm max_depth=2 lr=0.05 max_iter=100", "model=knn k=15"),
                "Predict a quantitative measure of diabetes progression one year after baseline, from 10 "
                "(already centred and scaled) patient measurements."),
    BuiltinTask("clf_noisy", "train", "roc_auc", "target",
                _generated(datasets.make_classification, n_samples=1500, n_features=20, n_informative=6,
                           n_redundant=2, flip_y=0.1),
                ("model=gbm max_depth=3 lr=0.1 max_iter=100", "model=rf n_estimators=100 min_samples_leaf=3",
                 "model=logreg C=1.0"),
                "Binary classification with label noise (10% of labels flipped) and many uninformative features."),
    BuiltinTask("clf_imbalanced", "train", "f1_macro", "target",
                _generated(datasets.make_classification, n_samples=1500, n_features=15, n_informative=5,
                           n_redundant=2, weights=[0.9, 0.1], flip_y=0.02),
                ("model=gbm max_depth=4 lr=0.1 max_iter=100", "model=rf n_estimators=100", "model=knn k=5"),
                "Binary classification with a rare positive class (about 10% of rows); graded by macro F1."),
    BuiltinTask("clf_multiclass", "heldout", "log_loss", "target",
                _generated(datasets.make_classification, n_samples=1500, n_features=20, n_informative=8,
                           n_redundant=2, n_classes=4, n_clusters_per_class=1, flip_y=0.05),
                ("model=svm C=3", "model=knn k=25 weights=distance", "model=logreg C=1.0"),
                "Four-class classification with label noise and uninformative features; graded by log loss."),
    BuiltinTask("reg_linear", "train", "rmse", "target",
                _generated(datasets.make_regression, n_samples=1000, n_features=30, n_informative=8, noise=20.0),
                ("model=ridge alpha=1.0", "model=gbm max_depth=3 lr=0.1 max_iter=100", "model=rf n_estimators=50"),
                "Regression with Gaussian noise where only 8 of 30 features matter."),
    BuiltinTask("friedman1", "train", "rmse", "target",
                _generated(datasets.make_friedman1, n_samples=1200, n_features=10, noise=1.0),
                ("model=gbm max_depth=3 lr=0.1 max_iter=150", "model=rf n_estimators=100", "model=ridge alpha=1.0"),
                "Non-linear regression (Friedman #1): 5 features drive the target, 5 are noise."),
    BuiltinTask("moons", "heldout", "accuracy", "target",
                _generated(datasets.make_moons, n_noise=3, n_samples=1000, noise=0.3),
                ("model=svm C=1.0", "model=knn k=15", "model=logreg C=1.0"),
                "Two interleaving half-moons in 2 dimensions with noise, plus 3 irrelevant features."),
    BuiltinTask("friedman2", "heldout", "mae", "target",
                _generated(datasets.make_friedman2, n_samples=1000, noise=30.0),
                ("model=gbm max_depth=3 lr=0.1 max_iter=100", "model=rf n_estimators=100 min_samples_leaf=3",
                 "model=ridge alpha=1.0"),
                "Non-linear regression (Friedman #2, an impedance formula) with noise."),
    BuiltinTask("mixed_types", "train", "accuracy", "target", _mixed,
                ("model=gbm max_depth=4 lr=0.1 max_iter=100", "model=rf n_estimators=100", "model=logreg C=1.0"),
                "Binary classification with numeric and categorical columns and about 5% missing values."),
)


def builtin_ids() -> list[str]:
    return [t.id for t in BUILTIN_TASKS]
