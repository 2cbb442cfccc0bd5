"""The fixed solution pipeline that tiny-model specs are rendered into.

This file is self-contained (numpy, pandas, scikit-learn only): `rollout.env.spec.render_script`
copies its source into the script that runs in the sandbox, and task preparation calls `solve`
in-process to measure reference solutions, so both run exactly the same code.
Working-directory conventions: data in `data/` (read-only), the submission in `submission.csv`.
"""

import importlib
import math

import numpy as np
import pandas as pd


def build_model(model):
    """Instantiate `(class_path, kwargs)` into a scikit-learn estimator."""
    class_path, kwargs = model
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**kwargs)


def build_pipeline(model, preprocess, numeric, categorical):
    """Impute (and optionally scale) numeric columns, one-hot encode categorical ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num_steps = [SimpleImputer(strategy=preprocess.get("impute", "median"))]
    if preprocess.get("scale", 1):
        num_steps.append(StandardScaler())
    parts = []
    if numeric:
        parts.append(("num", make_pipeline(*num_steps), numeric))
    if categorical:
        cat = make_pipeline(
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
        )
        parts.append(("cat", cat, categorical))
    return Pipeline([("prep", ColumnTransformer(parts)), ("model", build_model(model))])


def metric_value(task, y_true, pred):
    """The task's metric on a validation split (the script's own estimate)."""
    from sklearn import metrics

    name = task["metric"]
    if name == "accuracy":
        return metrics.accuracy_score(y_true, pred)
    if name == "f1_macro":
        return metrics.f1_score(y_true, pred, average="macro")
    if name == "roc_auc":
        return metrics.roc_auc_score(y_true == task["classes"][1], pred)
    if name == "log_loss":
        return metrics.log_loss(y_true, pred, labels=task["classes"])
    if name == "rmse":
        return math.sqrt(metrics.mean_squared_error(y_true, pred))
    if name == "mae":
        return metrics.mean_absolute_error(y_true, pred)
    raise ValueError(f"unknown metric {name!r}")


def predict(task, pipe, frame):
    """Predictions in the task's output form: labels/values, P(positive), or a probability matrix."""
    output = task["output"]
    if output in ("label", "value"):
        return pipe.predict(frame)
    proba = pipe.predict_proba(frame)
    index = {str(c): i for i, c in enumerate(pipe.classes_)}
    full = np.zeros((len(frame), len(task["classes"])))
    for j, c in enumerate(task["classes"]):
        if c in index:
            full[:, j] = proba[:, index[c]]
    if output == "proba_positive":
        return full[:, 1]
    return full


def solve(task, model, preprocess, data_dir="data", out_path="submission.csv", seed=0):
    """Fit on 80% of train.csv, print the validation metric on the rest, write the submission."""
    train = pd.read_csv(f"{data_dir}/train.csv")
    test = pd.read_csv(f"{data_dir}/test.csv")
    id_col, target = task["id_column"], task["target_column"]
    y = train[target]
    if task["kind"] == "classification":
        y = y.astype(str)
    features = [c for c in train.columns if c not in (id_col, target)]
    x = train[features]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(x[c])]
    categorical = [c for c in features if c not in numeric]
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(train))
    n_val = max(1, len(train) // 5)
    val_idx, fit_idx = order[:n_val], order[n_val:]
    pipe = build_pipeline(model, preprocess, numeric, categorical)
    pipe.fit(x.iloc[fit_idx], y.iloc[fit_idx])
    score = metric_value(task, y.iloc[val_idx].to_numpy(), predict(task, pipe, x.iloc[val_idx]))
    print(f"validation_metric: {score:.6f}")
    pred = predict(task, pipe, test[features])
    sub = pd.DataFrame({id_col: test[id_col]})
    if task["output"] == "proba_columns":
        for j, col in enumerate(task["submission_columns"]):
            sub[col] = pred[:, j]
    else:
        sub[task["submission_columns"][0]] = pred
    sub.to_csv(out_path, index=False)
    return score
