"""Grading a submission against a task's private answers (outside the sandbox).

Every malformed submission is "invalid" with the reason: missing or unreadable file, wrong
columns, wrong row count, unknown / duplicate / missing ids, NaN, wrong dtype or label.
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rollout.env.metrics import get_metric
from rollout.env.tasks import Task

MAX_SUBMISSION_BYTES = 64 << 20
MAX_REASON_CHARS = 400  # a reason goes into prompts and the buffer's payloads
MAX_HEADER_BYTES = 64 << 10
EXTRA_COLUMNS_ALLOWED = 16  # beyond the expected ones, before pandas is asked to parse


@dataclass(frozen=True)
class GradeResult:
    """A graded submission: valid with a score, or invalid with the reason."""

    valid: bool
    score: float | None = None
    reason: str = ""


def invalid(reason: str) -> GradeResult:
    """An invalid grade; the reason is cut to MAX_REASON_CHARS."""
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS - 16] + " ... [truncated]"
    return GradeResult(False, None, reason)


def read_submission_bytes(path: str | os.PathLike, max_bytes: int = MAX_SUBMISSION_BYTES) -> bytes:
    """The file's bytes, refusing symlinks, non-regular files and oversize files (ValueError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ValueError("submission.csv was not written") from None
    except OSError as exc:
        raise ValueError(f"submission.csv could not be opened ({exc.strerror}); it must be a regular file") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("submission.csv is not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"submission.csv is larger than {max_bytes} bytes")
    if not data.strip():
        raise ValueError("submission.csv is empty")
    return data


def _canon_labels(values: pd.Series, int_like: bool) -> pd.Series:
    values = values.str.strip()
    if not int_like:
        return values
    num = pd.to_numeric(values, errors="coerce")
    ok = num.notna() & np.isfinite(num) & (num == np.round(num))
    out = values.copy()
    out[ok] = num[ok].astype(np.int64).astype(str)
    return out


def _is_int_like(labels) -> bool:
    try:
        return all(float(x) == int(float(x)) for x in labels)
    except ValueError:
        return False


def _read_csv(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])


def shape_problem(task: Task, data: bytes, n_rows: int) -> str | None:
    """Bounds checked on the raw bytes before pandas parses them (a parse costs rows x columns).

    The header must be short with at most a few more columns than expected, and the file may
    hold at most about twice the expected lines. None when the shape is plausible."""
    cfg = task.config
    expected = [cfg.id_column, *cfg.submission_columns]
    first = data.split(b"\n", 1)[0]
    if len(first) > MAX_HEADER_BYTES:
        return f"the header line is longer than {MAX_HEADER_BYTES} bytes (expected columns {', '.join(expected)})"
    header = next(csv.reader([first.decode("utf-8", errors="replace").rstrip("\r")]), [])
    if len(header) > len(expected) + EXTRA_COLUMNS_ALLOWED:
        return f"the header has {len(header)} columns, expected {len(expected)} ({', '.join(expected)})"
    max_lines = 2 * n_rows + 1000
    if data.count(b"\n") > max_lines:
        return f"expected {n_rows} rows, got more than {max_lines} lines"
    return None


def check_and_score(task: Task, sub: pd.DataFrame, answers: pd.DataFrame) -> GradeResult:
    """Validate a submission frame (all strings) against the answers and score it."""
    cfg = task.config
    metric = get_metric(cfg.metric)
    expected = [cfg.id_column, *cfg.submission_columns]
    missing = [c for c in expected if c not in sub.columns]
    if missing:
        return invalid(f"missing column(s): {', '.join(missing)} (expected {', '.join(expected)})")
    extra = [c for c in sub.columns if c not in expected]
    if extra:
        return invalid(f"unexpected column(s): {', '.join(map(str, extra))} (expected {', '.join(expected)})")
    if len(sub) != len(answers):
        return invalid(f"expected {len(answers)} rows, got {len(sub)}")
    ids = sub[cfg.id_column].fillna("").str.strip()
    dup = ids[ids.duplicated()]
    if len(dup):
        return invalid(f"duplicate id(s) in {cfg.id_column}: {', '.join(dup.head(3))}")
    true_ids = answers[cfg.id_column].str.strip()
    unknown = ids[~ids.isin(set(true_ids))]
    if len(unknown):
        return invalid(f"{len(unknown)} id(s) not in test.csv, e.g. {', '.join(unknown.head(3))}")
    sub = sub.assign(**{cfg.id_column: ids}).set_index(cfg.id_column).loc[true_ids.to_numpy()]
    for col in cfg.submission_columns:
        n_nan = int(sub[col].isna().sum())
        if n_nan:
            return invalid(f"column {col} has {n_nan} missing value(s) (NaN or empty)")
    y_true = answers[cfg.target_column].str.strip()
    if metric.output == "label":
        int_like = _is_int_like(cfg.classes)
        pred = _canon_labels(sub[cfg.submission_columns[0]], int_like)
        y_true = _canon_labels(y_true, int_like)
        bad = pred[~pred.isin(set(cfg.classes))]
        if len(bad):
            return invalid(f"column {cfg.submission_columns[0]} has label(s) not among the classes "
                           f"{list(cfg.classes)}, e.g. {bad.iloc[0]!r}")
        return GradeResult(True, metric.score(y_true.to_numpy(), pred.to_numpy(), cfg.classes))
    values = {}
    for col in cfg.submission_columns:
        num = pd.to_numeric(sub[col].str.strip(), errors="coerce")
        if num.isna().any():
            return invalid(f"column {col} must be numeric, got {sub[col][num.isna()].iloc[0]!r}")
        arr = num.to_numpy(dtype=float)
        if not np.isfinite(arr).all():
            return invalid(f"column {col} has non-finite values")
        if metric.output != "value" and ((arr < 0) | (arr > 1)).any():
            return invalid(f"column {col} must hold probabilities in [0, 1]")
        values[col] = arr
    if metric.output == "value":
        y = pd.to_numeric(y_true, errors="raise").to_numpy(dtype=float)
        return GradeResult(True, metric.score(y, values[cfg.submission_columns[0]], cfg.classes))
    if metric.output == "proba_positive":
        return GradeResult(True, metric.score(y_true.to_numpy(), values[cfg.submission_columns[0]], cfg.classes))
    proba = np.stack([values[c] for c in cfg.submission_columns], axis=1)
    if (proba.sum(axis=1) <= 0).any():
        return invalid("every row's probabilities must sum to more than 0")
    y_true = _canon_labels(y_true, _is_int_like(cfg.classes))
    return GradeResult(True, metric.score(y_true.to_numpy(), proba, cfg.classes))


def load_answers(task: Task) -> pd.DataFrame:
    return _read_csv(task.answers_path.read_bytes())


def grade_bytes(task: Task, data: bytes, answers: pd.DataFrame | None = None) -> GradeResult:
    """Grade a submission given as CSV bytes, its shape bounded before pandas parses it."""
    answers = load_answers(task) if answers is None else answers
    problem = shape_problem(task, data, len(answers))
    if problem is not None:
        return invalid(problem)
    try:
        sub = _read_csv(data)
    except Exception as exc:  # pandas raises several parser error types
        return invalid(f"could not parse submission.csv as CSV: {str(exc).strip().splitlines()[0][:200]}")
    if len(sub) == 0:
        return invalid("submission.csv has a header but no rows")
    result = check_and_score(task, sub, answers)
    if result.valid and not math.isfinite(result.score):
        return invalid("the metric is not finite for this submission")
    return result


def grade_submission(task: Task, path: str | os.PathLike) -> GradeResult:
    """Grade the submission file at `path` (a symlink or a non-regular file is invalid)."""
    try:
        data = read_submission_bytes(Path(path))
    except ValueError as exc:
        return invalid(str(exc))
    return grade_bytes(task, data)
