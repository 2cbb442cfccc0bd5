"""Preparing the built-in tasks on disk, deterministically (same machine, same bytes).

References are run in-process through `solution_template.solve` (the code a rendered spec
runs in the sandbox) with BLAS/OpenMP limited to one thread, exactly as in the sandbox.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from rollout.machine_files import locked
from rollout.env import solution_template
from rollout.env.builtin_tasks import TUNING_GRID, BuiltinTask
from rollout.env.graders import grade_bytes
from rollout.env.medals import medal_thresholds
from rollout.env.metrics import aligned, get_metric
from rollout.env.spec import parse_spec
from rollout.env.suites import get_suite
from rollout.env.tasks import (Task, TaskConfig, TaskError, load_task, load_tasks, staged_task_dir,
                               write_csv, write_task)

log = logging.getLogger(__name__)
ID_COLUMN = "id"


def constant_submission(cfg: TaskConfig, y_train: pd.Series, test_ids: pd.Series) -> pd.DataFrame:
    """The trivial baseline: one constant prediction (majority class, prior, mean or median)."""
    output = get_metric(cfg.metric).output
    sub = pd.DataFrame({cfg.id_column: test_ids.to_numpy()})
    if output == "label":
        counts = y_train.astype(str).value_counts()
        sub[cfg.submission_columns[0]] = sorted(counts[counts == counts.max()].index)[0]
    elif output == "value":
        y = y_train.astype(float)
        sub[cfg.submission_columns[0]] = float(y.median() if cfg.metric == "mae" else y.mean())
    else:
        freq = y_train.astype(str).value_counts(normalize=True)
        priors = [float(freq.get(c, 0.0)) for c in cfg.classes]
        if output == "proba_positive":
            sub[cfg.submission_columns[0]] = priors[1]
        else:
            for col, p in zip(cfg.submission_columns, priors):
                sub[col] = p
    return sub


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    write_csv(frame, buf)
    return buf.getvalue().encode()


def run_reference(task: Task, spec: str) -> bytes:
    """Run a reference spec in-process on the task's public data; return the submission bytes."""
    info = task.template_info()
    model, preprocess = parse_spec(spec).resolve(info["kind"], info["output"].startswith("proba"))
    out = task.root / ".reference_submission.csv"
    with threadpool_limits(1), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solution_template.solve(info, model, preprocess, str(task.public_dir), str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def describe(b: BuiltinTask, cfg: TaskConfig, train: pd.DataFrame, test: pd.DataFrame) -> str:
    metric = get_metric(cfg.metric)
    better = "higher" if metric.direction == "maximize" else "lower"
    if metric.output == "proba_columns":
        form = (f"one probability column per class ({', '.join(cfg.submission_columns)}), for classes "
                f"{', '.join(cfg.classes)} in that order")
    elif metric.output == "proba_positive":
        form = f"`{cfg.submission_columns[0]}`: the probability that the label is {cfg.classes[1]}"
    elif metric.output == "label":
        form = f"`{cfg.submission_columns[0]}`: the predicted label, one of {', '.join(cfg.classes)}"
    else:
        form = f"`{cfg.submission_columns[0]}`: the predicted value"
    features = [c for c in train.columns if c not in (cfg.id_column, cfg.target_column)]
    return (
        f"# {cfg.id}\n\n{b.blurb}\n\n## Data\n"
        f"- `train.csv`: {len(train)} rows: `{cfg.id_column}`, {len(features)} feature columns and the target "
        f"`{cfg.target_column}`.\n"
        f"- `test.csv`: {len(test)} rows with the same columns except the target.\n"
        f"- `sample_submission.csv`: a valid submission in the right format.\n\n"
        f"## Evaluation\nSubmissions are scored with {cfg.metric} on the hidden test labels ({better} is better).\n\n"
        f"## Submission\nA CSV with a row per test row: `{cfg.id_column}` and {form}.\n"
    )


def _split(b: BuiltinTask, kind: str):
    x, y = b.make()
    frame = x.copy()
    frame.insert(0, ID_COLUMN, np.arange(len(frame)))
    frame[b.target] = y.to_numpy()
    strat = y if kind == "classification" else None
    return train_test_split(frame, test_size=0.25, random_state=0, stratify=strat)


def prepare_one(b: BuiltinTask, dest: Path, source: str) -> Task:
    """Make, measure and write one built-in task into `dest` (replaced); `source` names its suite
    and version (`Suite.source`)."""
    metric = get_metric(b.metric)
    train, test = _split(b, metric.kind)
    classes = tuple(sorted({str(v) for v in train[b.target]}, key=_label_key)) if metric.kind == "classification" else ()
    cols = tuple(f"{b.target}_{c}" for c in classes) if metric.output == "proba_columns" else (b.target,)
    worst, best = (0.0, 1.0) if metric.direction == "maximize" else (1.0, 0.0)  # placeholders until measured
    cfg = TaskConfig(id=b.id, metric=b.metric, direction=metric.direction, kind=metric.kind, id_column=ID_COLUMN,
                     target_column=b.target, submission_columns=cols, classes=classes, baseline_score=worst,
                     reference_score=best, medals={"gold": best, "silver": best, "bronze": best}, split=b.split,
                     source=source)
    public_test = test.drop(columns=[b.target])
    answers = test[[ID_COLUMN, b.target]]
    sample = constant_submission(cfg, train[b.target], test[ID_COLUMN])
    with staged_task_dir(dest) as staging:
        provisional = write_task(staging, cfg, "", train, public_test, sample, answers)
        answers_str = pd.read_csv(provisional.answers_path, dtype=str, keep_default_na=False)
        baseline = grade_bytes(provisional, _csv_bytes(sample), answers_str)
        if not baseline.valid:
            raise TaskError(f"builtin task {b.id}: its sample submission is invalid: {baseline.reason}")
        measured = {}
        for spec in dict.fromkeys(b.references + TUNING_GRID[metric.kind]):
            result = grade_bytes(provisional, run_reference(provisional, spec), answers_str)
            if not result.valid:
                raise TaskError(f"builtin task {b.id}: reference {spec!r} is invalid: {result.reason}")
            measured[spec] = result.score
        weakest = min((measured[s] for s in b.references), key=lambda s: aligned(metric.direction, s))
        if aligned(metric.direction, weakest) <= aligned(metric.direction, baseline.score):
            raise TaskError(f"builtin task {b.id}: weakest reference {weakest} does not beat the baseline "
                            f"{baseline.score}")
        leaderboard = list(measured.values())
        best = max(leaderboard, key=lambda s: aligned(metric.direction, s))
        final = replace(cfg, baseline_score=baseline.score, reference_score=best,
                        medals=medal_thresholds(leaderboard, metric.direction), references=measured)
        write_task(staging, final, describe(b, final, train, public_test), train, public_test, sample, answers)
    return load_task(dest)


def _label_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _is_current(path: Path, source: str) -> bool:
    try:
        return load_task(path).config.source == source
    except (TaskError, OSError):
        return False


def prepare_builtin(root: str | os.PathLike | None = None, ids: list[str] | None = None,
                    force: bool = False, progress=None, suite: str = "core") -> dict[str, Task]:
    """Prepare a suite's built-in tasks under `root` (default: the suite's own directory, see
    `rollout.env.suites`); skip current ones."""
    s = get_suite(suite)
    root = Path(root) if root is not None else s.default_dir()
    wanted = [b for b in s.tasks if ids is None or b.id in ids]
    unknown = sorted(set(ids or ()) - {b.id for b in s.tasks})
    if unknown:
        raise KeyError(f"unknown builtin task(s) {', '.join(unknown)} in suite {suite}; "
                       f"known: {', '.join(b.id for b in s.tasks)}")
    with locked(root / ".lock"):
        for i, b in enumerate(wanted):
            dest = root / b.id
            if not force and _is_current(dest, s.source):
                continue
            if progress:
                progress(f"preparing task {b.id} ({i + 1}/{len(wanted)})")
            log.info("preparing builtin task %s", b.id)
            prepare_one(b, dest, s.source)
    return {k: v for k, v in load_tasks(root).items()}


def ensure_tasks(root: str | os.PathLike | None = None, progress=None, suite: str = "core") -> dict[str, Task]:
    """All tasks under `root` (default: the suite's directory), preparing the suite's built-in
    ones first if any is missing or stale."""
    return prepare_builtin(root, progress=progress, suite=suite)
