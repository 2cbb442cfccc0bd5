"""A task's reference solutions as code-mode answers: compact, self-contained scripts.

The code-mode warm start clones these (a real MLE agent starts from an SFT policy that already
writes working pipelines). Each script fits the reference spec's scikit-learn estimator on
all of train.csv with the spec's preprocessing and writes submission.csv in the task's format.
"""

from __future__ import annotations

from rollout.env.parsing import format_response
from rollout.env.spec import parse_spec
from rollout.env.tasks import Task

_HEADER = '''import numpy as np
import pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from {module} import {name}

train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
features = [c for c in train.columns if c not in ({id_col!r}, {target!r})]
numeric = [c for c in features if pd.api.types.is_numeric_dtype(train[c])]
categorical = [c for c in features if c not in numeric]
num = make_pipeline({numeric_steps})
cat = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
model = make_pipeline(make_column_transformer((num, numeric), (cat, categorical)), {name}(**{kwargs!r}))
model.fit(train[features], train[{target!r}]{as_label})
sub = pd.DataFrame({{{id_col!r}: test[{id_col!r}]}})
'''

_OUTPUTS = {
    "label": "sub[{col!r}] = model.predict(test[features])\n",
    "value": "sub[{col!r}] = model.predict(test[features])\n",
    "proba_positive": ("classes = [str(c) for c in model.classes_]\n"
                       "sub[{col!r}] = model.predict_proba(test[features])[:, classes.index({positive!r})]\n"),
    "proba_columns": ("proba = model.predict_proba(test[features])\n"
                      "classes = [str(c) for c in model.classes_]\n"
                      "for col, label in zip({cols!r}, {labels!r}):\n"
                      "    sub[col] = proba[:, classes.index(label)] if label in classes else 0.0\n"),
}


def reference_script(task: Task, spec: str) -> str:
    """The script of one reference spec on `task`."""
    info = task.template_info()
    (class_path, kwargs), preprocess = parse_spec(spec).resolve(info["kind"], info["output"].startswith("proba"))
    module, _, name = class_path.rpartition(".")
    steps = f'SimpleImputer(strategy={preprocess.get("impute", "median")!r})'
    if preprocess.get("scale", 1):
        steps += ", StandardScaler()"
    classification = info["kind"] == "classification"
    head = _HEADER.format(module=module, name=name, id_col=info["id_column"], target=info["target_column"],
                          numeric_steps=steps, kwargs=kwargs, as_label=".astype(str)" if classification else "")
    cols = info["submission_columns"]
    classes = list(info.get("classes") or [])
    out = _OUTPUTS[info["output"]].format(col=cols[0], cols=cols, labels=classes,
                                          positive=classes[1] if len(classes) > 1 else None)
    return head + out + 'sub.to_csv("submission.csv", index=False)\n'


def reference_responses(task: Task) -> list[str]:
    """Every reference spec of `task` as a well-formed code-mode answer (plan + one python block)."""
    specs = sorted(task.config.references) or []
    return [format_response(f"Fit {spec.split()[0].split('=')[1]} ({spec}) on all of the training data and "
                            "write the test predictions.", reference_script(task, spec)) for spec in specs]
