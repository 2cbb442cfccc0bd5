"""Compact solution specs for tiny models: `model=gbm max_depth=4 lr=0.1`.

A spec names one estimator from a fixed table and some of its hyperparameters (plus two
preprocessing switches); `render_script` turns it into a full solution script built on
`solution_template`, so spec actions run in the same sandbox and grading as code actions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rollout.env import solution_template


class SpecError(ValueError):
    """A spec that does not follow the grammar; the message names the bad key or value."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter: spec name, scikit-learn keyword, type and allowed values."""

    name: str
    kwarg: str
    kind: str  # "int" | "float" | "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def parse(self, text: str) -> int | float | str:
        if self.kind == "choice":
            if text not in self.choices:
                raise SpecError(f"{self.name}={text}: allowed values are {', '.join(self.choices)}")
            return text
        try:
            value = int(text) if self.kind == "int" else float(text)
        except ValueError:
            raise SpecError(f"{self.name}={text}: expected {'an integer' if self.kind == 'int' else 'a number'}") from None
        if not (self.low <= value <= self.high) or (isinstance(value, float) and not math.isfinite(value)):
            raise SpecError(f"{self.name}={text}: allowed range is [{self.low:g}, {self.high:g}]")
        return value

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}={'|'.join(self.choices)}"
        return f"{self.name}=<{self.kind} {self.low:g}..{self.high:g}>"


@dataclass(frozen=True)
class Estimator:
    """An estimator family with its classifier / regressor classes and tunable parameters."""

    name: str
    classifier: str | None
    regressor: str | None
    params: tuple[Param, ...]
    fixed: dict = field(default_factory=dict)
    proba_fixed: dict = field(default_factory=dict)  # extra kwargs when probabilities are needed


_DEPTH = Param("max_depth", "max_depth", "int", 1, 64)
_LEAF = Param("min_samples_leaf", "min_samples_leaf", "int", 1, 200)
_TREES = Param("n_estimators", "n_estimators", "int", 1, 500)
_FEATS = Param("max_features", "max_features", "float", 0.05, 1.0)

ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in [
        Estimator("logreg", "sklearn.linear_model.LogisticRegression", None,
                  (Param("C", "C", "float", 1e-4, 1e4), Param("max_iter", "max_iter", "int", 50, 5000)),
                  {"max_iter": 1000}),
        Estimator("ridge", None, "sklearn.linear_model.Ridge", (Param("alpha", "alpha", "float", 0.0, 1e6),)),
        Estimator("lasso", None, "sklearn.linear_model.Lasso",
                  (Param("alpha", "alpha", "float", 1e-6, 1e6), Param("max_iter", "max_iter", "int", 50, 5000)),
                  {"max_iter": 2000}),
        Estimator("rf", "sklearn.ensemble.RandomForestClassifier", "sklearn.ensemble.RandomForestRegressor",
                  (_TREES, _DEPTH, _LEAF, _FEATS), {"random_state": 0, "n_jobs": 1}),
        Estimator("extratrees", "sklearn.ensemble.ExtraTreesClassifier", "sklearn.ensemble.ExtraTreesRegressor",
                  (_TREES, _DEPTH, _LEAF, _FEATS), {"random_state": 0, "n_jobs": 1}),
        Estimator("gbm", "sklearn.ensemble.HistGradientBoostingClassifier",
                  "sklearn.ensemble.HistGradientBoostingRegressor",
                  (_DEPTH, Param("lr", "learning_rate", "float", 1e-3, 1.0),
                   Param("max_iter", "max_iter", "int", 5, 1000), _LEAF,
                   Param("l2", "l2_regularization", "float", 0.0, 100.0)),
                  {"random_state": 0, "early_stopping": False}),
        Estimator("knn", "sklearn.neighbors.KNeighborsClassifier", "sklearn.neighbors.KNeighborsRegressor",
                  (Param("k", "n_neighbors", "int", 1, 200), Param("weights", "weights", "choice", choices=("uniform", "distance")))),
        Estimator("svm", "sklearn.svm.SVC", "sklearn.svm.SVR",
                  (Param("C", "C", "float", 1e-3, 1e3), Param("kernel", "kernel", "choice", choices=("rbf", "linear", "poly")),
                   Param("gamma", "gamma", "choice", choices=("scale", "auto"))),
                  proba_fixed={"probability": True, "random_state": 0}),
        Estimator("tree", "sklearn.tree.DecisionTreeClassifier", "sklearn.tree.DecisionTreeRegressor",
                  (_DEPTH, _LEAF), {"random_state": 0}),
        Estimator("nb", "sklearn.naive_bayes.GaussianNB", None,
                  (Param("var_smoothing", "var_smoothing", "float", 1e-12, 1.0),)),
        Estimator("mlp", "sklearn.neural_network.MLPClassifier", "sklearn.neural_network.MLPRegressor",
                  (Param("hidden", "hidden_layer_sizes", "int", 1, 512), Param("alpha", "alpha", "float", 0.0, 10.0),
                   Param("max_iter", "max_iter", "int", 10, 2000)),
                  {"random_state": 0, "max_iter": 300}),
    ]
}

PREPROCESS_PARAMS: tuple[Param, ...] = (
    Param("scale", "scale", "choice", choices=("0", "1")),
    Param("impute", "impute", "choice", choices=("median", "mean")),
)


@dataclass(frozen=True)
class Spec:
    """A parsed spec: the estimator name and the given parameter values, in order."""

    model: str
    params: tuple[tuple[str, int | float | str], ...] = ()

    def to_string(self) -> str:
        return " ".join([f"model={self.model}"] + [f"{k}={_fmt(v)}" for k, v in self.params])

    def resolve(self, kind: str, proba: bool = False) -> tuple[tuple[str, dict], dict]:
        """`((class_path, kwargs), preprocess)` for a task of `kind` (classification/regression);
        `proba`: the task needs predicted probabilities."""
        est = ESTIMATORS[self.model]
        class_path = est.classifier if kind == "classification" else est.regressor
        if class_path is None:
            other = "regression" if kind == "classification" else "classification"
            raise SpecError(f"model={self.model} is for {other} tasks only; this task is {kind}")
        kwargs = dict(est.fixed, **(est.proba_fixed if proba and kind == "classification" else {}))
        by_name = {p.name: p for p in est.params}
        preprocess: dict = {}
        for key, value in self.params:
            if key in by_name:
                p = by_name[key]
                kwargs[p.kwarg] = (value,) if p.kwarg == "hidden_layer_sizes" else value
            else:
                preprocess[key] = int(value) if key == "scale" else value
        return (class_path, kwargs), preprocess


def _fmt(value: int | float | str) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def parse_spec(text: str) -> Spec:
    """Parse `model=<name> <param>=<value> ...`; raise SpecError naming what is wrong."""
    tokens = text.split()
    if not tokens:
        raise SpecError("empty spec: expected 'model=<name> <param>=<value> ...'")
    pairs: list[tuple[str, str]] = []
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if not eq or not key or not value:
            raise SpecError(f"bad token {tok!r}: expected <key>=<value>")
        if key in dict(pairs):
            raise SpecError(f"duplicate key {key!r}")
        pairs.append((key, value))
    if pairs[0][0] != "model":
        raise SpecError("a spec starts with model=<name>")
    name = pairs[0][1]
    if name not in ESTIMATORS:
        raise SpecError(f"model={name}: allowed models are {', '.join(ESTIMATORS)}")
    allowed = {p.name: p for p in ESTIMATORS[name].params + PREPROCESS_PARAMS}
    params = []
    for key, value in pairs[1:]:
        if key not in allowed:
            raise SpecError(f"unknown parameter {key!r} for model={name}; allowed: {', '.join(allowed)}")
        params.append((key, allowed[key].parse(value)))
    return Spec(name, tuple(params))


def grammar_text() -> str:
    """A one-line-per-model description of the grammar (for prompts)."""
    lines = ["model=<name> <param>=<value> ... ; preprocessing: " + " ".join(p.describe() for p in PREPROCESS_PARAMS)]
    for est in ESTIMATORS.values():
        kinds = [k for k, c in (("classification", est.classifier), ("regression", est.regressor)) if c]
        lines.append(f"model={est.name} ({'/'.join(kinds)}): " + " ".join(p.describe() for p in est.params))
    return "\n".join(lines)


def grammar_words() -> list[str]:
    """Every word a spec can contain (for the tiny model's vocabulary)."""
    words = ["model", "="] + list(ESTIMATORS)
    for p in PREPROCESS_PARAMS + tuple(p for e in ESTIMATORS.values() for p in e.params):
        words.append(p.name)
        words.extend(p.choices)
    return sorted(set(words))


def render_script(spec: Spec | str, task_info: dict) -> str:
    """A complete solution script for `spec` on a task (see `Task.template_info`)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    model, preprocess = spec.resolve(task_info["kind"], task_info["output"].startswith("proba"))
    source = Path(solution_template.__file__).read_text()
    return (
        f"# spec: {spec.to_string()}\n{source}\n\n"
        f"TASK = {task_info!r}\nMODEL = {model!r}\nPREPROCESS = {preprocess!r}\n\n"
        'if __name__ == "__main__":\n    solve(TASK, MODEL, PREPROCESS)\n'
    )
