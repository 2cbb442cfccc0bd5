"""Graders equal scikit-learn's metrics; every malformed submission is rejected with its reason."""

import io
import math
import os

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from rollout.env.graders import grade_bytes, grade_submission
from rollout.env.metrics import METRICS, aligned, get_metric
from rollout.env.tasks import TaskConfig, TaskError, load_task, write_task

N = 40


def make_task(root, metric_name: str, seed: int = 0, classes=("0", "1", "2")):
    """A small task for `metric_name` with random data; returns (task, answers frame)."""
    metric = get_metric(metric_name)
    rng = np.random.RandomState(seed)
    ids = np.arange(100, 100 + N)
    if metric.kind == "regression":
        y, classes, cols = rng.normal(size=N).round(4), (), ("y",)
    else:
        classes = classes if metric.output != "proba_positive" else ("0", "1")
        y = np.array(classes)[np.arange(N) % len(classes)]
        cols = tuple(f"p_{c}" for c in classes) if metric.output == "proba_columns" else ("y",)
    better, worse = (1.0, 0.0) if metric.direction == "maximize" else (0.0, 1.0)
    cfg = TaskConfig(id=f"t_{metric_name}", metric=metric_name, direction=metric.direction, kind=metric.kind,
                     id_column="id", target_column="y", submission_columns=cols, classes=tuple(classes),
                     baseline_score=worse, reference_score=better,
                     medals={"gold": better, "silver": better, "bronze": better}, split="train", source="test")
    feats = pd.DataFrame({"id": ids, "x": rng.normal(size=N)})
    answers = pd.DataFrame({"id": ids, "y": y})
    sample = pd.DataFrame({"id": ids, **{c: 0 for c in cols}})
    task = write_task(root / cfg.id, cfg, "desc", feats.assign(y=y), feats, sample, answers)
    return task, answers


def random_submission(task, answers, rng):
    cfg, metric = task.config, get_metric(task.config.metric)
    sub = pd.DataFrame({"id": answers["id"]})
    if metric.output == "label":
        pred = np.where(rng.rand(N) < 0.6, answers["y"].astype(str), rng.choice(cfg.classes, N))
        sub["y"] = pred
    elif metric.output == "value":
        sub["y"] = answers["y"] + rng.normal(size=N)
    elif metric.output == "proba_positive":
        sub["y"] = rng.rand(N)
    else:
        p = rng.rand(N, len(cfg.classes)) * 0.9 + 0.05
        for j, c in enumerate(cfg.submission_columns):
            sub[c] = p[:, j]
    return sub.sample(frac=1.0, random_state=1)  # row order must not matter


def sklearn_reference(task, answers, sub) -> float:
    """The metric computed directly with scikit-learn (rows aligned by id)."""
    cfg = task.config
    sub = sub.set_index("id").loc[answers["id"]]
    y = answers["y"].to_numpy()
    name = cfg.metric
    if name == "accuracy":
        return skm.accuracy_score(y.astype(str), sub["y"].astype(str))
    if name == "f1_macro":
        return skm.f1_score(y.astype(str), sub["y"].astype(str), average="macro")
    if name == "roc_auc":
        return skm.roc_auc_score(y.astype(str) == "1", sub["y"])
    if name == "log_loss":
        p = sub[list(cfg.submission_columns)].to_numpy()
        return skm.log_loss(y.astype(str), p / p.sum(axis=1, keepdims=True), labels=list(cfg.classes))
    if name == "rmse":
        return math.sqrt(skm.mean_squared_error(y, sub["y"]))
    if name == "mae":
        return skm.mean_absolute_error(y, sub["y"])
    raise AssertionError(name)


def to_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


@pytest.mark.parametrize("metric_name", sorted(METRICS))
def test_grader_equals_sklearn(tmp_path, metric_name):
    task, answers = make_task(tmp_path, metric_name)
    rng = np.random.RandomState(3)
    for _ in range(3):
        sub = random_submission(task, answers, rng)
        result = grade_bytes(task, to_bytes(sub))
        assert result.valid, result.reason
        assert result.score == pytest.approx(sklearn_reference(task, answers, sub), rel=1e-9, abs=1e-12)


def test_perfect_and_constant_submissions(tmp_path):
    task, answers = make_task(tmp_path, "accuracy")
    perfect = grade_bytes(task, to_bytes(answers))
    assert perfect.valid and perfect.score == 1.0
    # integer labels written as floats still count as the same labels
    as_float = answers.assign(y=answers["y"].astype(float))
    assert grade_bytes(task, to_bytes(as_float)).score == 1.0


def _mutations(task, answers):
    """(name, submission bytes, expected reason fragment) for an accuracy task."""
    good = answers.copy()
    yield "empty", b"", "empty"
    yield "header only", b"id,y\n", "no rows"
    yield "not csv", b"\x00\x01\x02garbage\n\"unterminated", "could not parse"
    yield "missing column", to_bytes(good[["id"]]), "missing column(s): y"
    yield "extra column", to_bytes(good.assign(z=1)), "unexpected column(s): z"
    yield "too few rows", to_bytes(good.iloc[:-1]), f"expected {N} rows, got {N - 1}"
    yield "too many rows", to_bytes(pd.concat([good, good.iloc[:1]])), f"expected {N} rows, got {N + 1}"
    dup = good.copy()
    dup.loc[1, "id"] = dup.loc[0, "id"]
    yield "duplicate id", to_bytes(dup), "duplicate id"
    unknown = good.copy()
    unknown.loc[0, "id"] = 99999
    yield "unknown id", to_bytes(unknown), "not in test.csv"
    nan = good.astype({"y": object}).copy()
    nan.loc[3, "y"] = np.nan
    yield "nan", to_bytes(nan), "missing value"
    bad = good.astype({"y": object}).copy()
    bad.loc[2, "y"] = "cat"
    yield "unknown label", to_bytes(bad), "not among the classes"


def test_malformed_submissions_rejected_with_reason(tmp_path):
    task, answers = make_task(tmp_path, "accuracy")
    for name, data, fragment in _mutations(task, answers):
        result = grade_bytes(task, data) if data else None
        if result is None:  # an empty file goes through the file path
            path = tmp_path / "empty.csv"
            path.write_bytes(data)
            result = grade_submission(task, path)
        assert not result.valid, name
        assert fragment in result.reason, (name, result.reason)


@pytest.mark.parametrize("metric_name,value,fragment", [
    ("log_loss", "abc", "must be numeric"),
    ("log_loss", "1.5", "probabilities in [0, 1]"),
    ("roc_auc", "-0.1", "probabilities in [0, 1]"),
    ("rmse", "inf", "non-finite"),
    ("rmse", "x", "must be numeric"),
])
def test_numeric_column_checks(tmp_path, metric_name, value, fragment):
    task, answers = make_task(tmp_path, metric_name)
    sub = random_submission(task, answers, np.random.RandomState(0)).astype(str)
    sub.iloc[0, 1] = value
    result = grade_bytes(task, to_bytes(sub))
    assert not result.valid and fragment in result.reason, result.reason


def test_log_loss_rows_must_have_mass(tmp_path):
    task, answers = make_task(tmp_path, "log_loss")
    sub = random_submission(task, answers, np.random.RandomState(0))
    sub.iloc[0, 1:] = 0.0
    result = grade_bytes(task, to_bytes(sub))
    assert not result.valid and "sum to more than 0" in result.reason


def test_submission_file_checks(tmp_path):
    task, answers = make_task(tmp_path, "accuracy")
    assert grade_submission(task, tmp_path / "nope.csv").reason == "submission.csv was not written"
    link = tmp_path / "link.csv"
    os.symlink(task.answers_path, link)  # a symlink to the answers must not be followed
    result = grade_submission(task, link)
    assert not result.valid and "regular file" in result.reason
    os.mkfifo(tmp_path / "fifo.csv")
    result = grade_submission(task, tmp_path / "fifo.csv")
    assert not result.valid and "regular file" in result.reason
    good = tmp_path / "good.csv"
    good.write_bytes(to_bytes(answers))
    assert grade_submission(task, good).score == 1.0


def test_aligned_and_metric_registry():
    assert aligned("maximize", 0.3) == 0.3 and aligned("minimize", 0.3) == -0.3
    assert {"accuracy", "roc_auc", "log_loss", "rmse", "mae", "f1_macro"} <= set(METRICS)
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        get_metric("bleu")


def test_task_yaml_errors_name_the_key(tmp_path):
    task, _ = make_task(tmp_path, "rmse")
    path = task.root / "task.yaml"
    text = path.read_text()
    path.write_text(text + "colour: blue\n")
    with pytest.raises(TaskError, match="unknown key.*colour"):
        load_task(task.root)
    path.write_text(text.replace("direction: minimize", "direction: maximize"))
    with pytest.raises(TaskError, match="direction"):
        load_task(task.root)
    path.write_text(text.replace("split: train", "split: dev"))
    with pytest.raises(TaskError, match="split 'dev'"):
        load_task(task.root)
    path.write_text(text)
    (task.root / "private" / "answers.csv").unlink()
    with pytest.raises(TaskError, match="answers.csv: missing"):
        load_task(task.root)


def test_medal_levels(tmp_path):
    task, _ = make_task(tmp_path, "rmse")
    cfg = task.config
    object.__setattr__(cfg, "medals", {"gold": 0.1, "silver": 0.2, "bronze": 0.4})
    assert task.medal(0.05) == "gold" and task.medal(0.2) == "silver"
    assert task.medal(0.3) == "bronze" and task.medal(0.5) is None and task.medal(None) is None


def test_csv_reader_handles_quoted_ids(tmp_path):
    task, answers = make_task(tmp_path, "mae")
    text = io.StringIO()
    answers.to_csv(text, index=False, quoting=1)  # every field quoted
    assert grade_bytes(task, text.getvalue().encode()).score == 0.0


GRADE_IN_CHILD = """
import sys, time
from rollout.env.graders import grade_submission
from rollout.env.tasks import load_task
# Peak RSS of this process from here on (ru_maxrss would include the parent's at fork).
open("/proc/self/clear_refs", "w").write("5")
start = time.monotonic()
result = grade_submission(load_task(sys.argv[1]), sys.argv[2])
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(time.monotonic() - start, hwm, result.valid, len(result.reason))
print(result.reason)
"""


def _grade_in_child(task, path) -> tuple[float, int, str]:
    """Grade in a fresh interpreter: (seconds, peak RSS in bytes, reason)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", GRADE_IN_CHILD, str(task.root), str(path)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()}, check=True).stdout
    first, reason = out.split("\n", 1)
    seconds, rss_kb, valid, _ = first.split()
    assert valid == "False"
    return float(seconds), int(rss_kb) << 10, reason.strip()


@pytest.mark.parametrize("columns", [5_000, 150_000, 1_000_000])
def test_wide_header_is_graded_in_bounded_time_and_memory(tmp_path, columns):
    task, _ = make_task(tmp_path, "accuracy")
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(columns)) + "\n" + ",".join("0" * columns) + "\n")
    seconds, peak, reason = _grade_in_child(task, path)
    assert seconds < 5 and peak < 1 << 30, (seconds, peak)
    short = f"the header has {columns} columns, expected 2"
    assert (short if columns < 10_000 else "the header line is longer than") in reason and len(reason) < 500


def test_row_flood_and_long_header_are_refused_before_parsing(tmp_path):
    task, _ = make_task(tmp_path, "accuracy")
    assert "got more than" in grade_bytes(task, b"id,y\n" + b"1,0\n" * 200_000).reason
    assert "header line is longer" in grade_bytes(task, b"id," + b"y" * (1 << 17) + b"\n1,0\n").reason


def test_reasons_are_truncated(tmp_path):
    task, answers = make_task(tmp_path, "accuracy")
    sub = answers.astype({"id": object}).copy()
    sub.loc[0, "id"] = "x" * 1_000_000  # an unknown id quoted in the reason
    result = grade_bytes(task, to_bytes(sub))
    assert not result.valid and "not in test.csv" in result.reason
    assert len(result.reason) <= 400 and result.reason.endswith("[truncated]")
