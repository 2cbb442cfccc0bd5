"""Converting competitions prepared by the mle-bench tooling into our task format.

mle-bench keeps each competition's definition in its source tree
(`mlebench/competitions/<id>/{config.yaml, description.md, leaderboard.csv}`) and writes the
prepared data to its data directory (`<data>/<id>/prepared/public/` with train.csv, test.csv
and sample_submission.csv, and `<data>/<id>/prepared/private/` with the answers named by
config.yaml's `dataset.answers`, relative to the data directory).

A competition converts when its grader maps to one of our metrics and its data is a tabular
train / test / sample-submission triple; the others are reported with the reason. The
baseline is the sample submission's score; the medal thresholds come from leaderboard.csv
(Kaggle's rules); the reference score is the gold threshold.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import yaml

from rollout.env.graders import grade_bytes
from rollout.env.medals import medal_thresholds
from rollout.env.metrics import aligned, get_metric
from rollout.env.tasks import (PUBLIC_FILES, Task, TaskConfig, TaskError, load_task, set_modes, staged_task_dir,
                               write_config, write_csv)

# mle-bench grader names -> our metrics.
GRADER_METRICS = {
    "accuracy": "accuracy", "multi-class-classification-accuracy": "accuracy",
    "auc-roc": "roc_auc", "log-loss": "log_loss", "multi-class-log-loss": "log_loss",
    "root-mean-squared-error": "rmse", "root_mean_squared_error": "rmse",
    "mean-absolute-error": "mae", "macro-f1-score": "f1_macro",
}


class CannotConvert(Exception):
    """This competition cannot become a task; the message says why."""


@dataclass
class ImportReport:
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def contained_file(path: Path, root: Path, what: str) -> Path:
    """`root / path` when it is a regular file inside `root` reached through no symlink, else CannotConvert."""
    if path.is_absolute() or ".." in path.parts:
        raise CannotConvert(f"{what} {path} is outside the competition directory {root} (absolute or '..')")
    current = root
    for part in path.parts:
        current = current / part
        if current.is_symlink():
            raise CannotConvert(f"{what} {path} goes through the symlink {current}; symlinks are refused")
    if not current.is_file():
        raise CannotConvert(f"{what} {current} not found")
    return current


def _answers_path(cfg: dict, data_dir: Path, comp_id: str) -> Path:
    """The private answers named by config.yaml (relative to the data dir), kept inside `<data>/<comp_id>`."""
    answers_rel = (cfg.get("dataset") or {}).get("answers")
    comp_root = data_dir / comp_id
    if not answers_rel:
        return contained_file(Path("prepared/private/test.csv"), comp_root, "answers file")
    rel = Path(str(answers_rel))
    if rel.is_absolute():
        raise CannotConvert(f"answers file {rel} is an absolute path; it must be relative to the data directory")
    if not rel.parts or rel.parts[0] != comp_id:
        raise CannotConvert(f"answers file {rel} is outside the competition directory {comp_root}")
    return contained_file(Path(*rel.parts[1:]), comp_root, "answers file")


def _config(comp_dirs: list[Path], comp_id: str) -> tuple[dict, Path]:
    for base in comp_dirs:
        path = base / comp_id / "config.yaml"
        if path.is_file():
            return yaml.safe_load(path.read_text()), path.parent
    raise CannotConvert(f"no config.yaml found for it under {', '.join(map(str, comp_dirs))}")


def _labels_from_onehot(answers: pd.DataFrame, columns: list[str]) -> pd.Series:
    values = answers[columns].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any():
        raise CannotConvert("log-loss answers must hold numeric one-hot class columns")
    return values.idxmax(axis=1)


def _leaderboard_scores(path: Path) -> list[float]:
    if not path.is_file():
        raise CannotConvert("no leaderboard.csv to set medal thresholds from")
    board = pd.read_csv(path)
    col = next((c for c in board.columns if c.lower() == "score"), None)
    if col is None:
        raise CannotConvert(f"{path.name} has no score column (columns: {', '.join(board.columns)})")
    scores = pd.to_numeric(board[col], errors="coerce").dropna().tolist()
    if not scores:
        raise CannotConvert(f"{path.name} has no numeric scores")
    return scores


def convert(comp_id: str, data_dir: Path, comp_dirs: list[Path], dest: Path, split: str = "heldout") -> Task:
    """Convert one competition into `dest`; raise CannotConvert with the reason."""
    cfg, comp_dir = _config(comp_dirs, comp_id)
    grader = str((cfg.get("grader") or {}).get("name", ""))
    if grader not in GRADER_METRICS:
        raise CannotConvert(f"grader {grader!r} has no equivalent metric (supported: {', '.join(sorted(GRADER_METRICS))})")
    metric = get_metric(GRADER_METRICS[grader])
    public = data_dir / comp_id / "prepared" / "public"
    missing = [f for f in PUBLIC_FILES if not (public / f).is_file()]
    if missing:
        raise CannotConvert(f"public data lacks {', '.join(missing)}")
    for name in PUBLIC_FILES:
        contained_file(Path(name), public, "public file")
    extra = sorted(p.name for p in public.iterdir() if p.name not in PUBLIC_FILES and p.name != "description.md")
    if extra:
        raise CannotConvert(f"public data is not a plain tabular triple (also has {', '.join(extra[:5])})")
    answers_path = _answers_path(cfg, data_dir, comp_id)
    desc_path = comp_dir / Path(str(cfg.get("description", "description.md"))).name
    if not desc_path.is_file():
        raise CannotConvert(f"description {desc_path} not found")
    sample, answers, train = _read(public / "sample_submission.csv"), _read(answers_path), _read(public / "train.csv")
    id_col, pred_cols = sample.columns[0], list(sample.columns[1:])
    if id_col not in answers.columns:
        raise CannotConvert(f"answers lack the id column {id_col!r}")
    if metric.output == "proba_columns":
        if len(pred_cols) < 2 or any(c not in answers.columns for c in pred_cols):
            raise CannotConvert("log-loss needs one-hot answers with the sample submission's class columns")
        target, classes = "label", tuple(pred_cols)
        answers = pd.DataFrame({id_col: answers[id_col], target: _labels_from_onehot(answers, pred_cols)})
    else:
        if len(pred_cols) != 1:
            raise CannotConvert(f"{metric.name} needs a single prediction column, the sample has {len(pred_cols)}")
        target = pred_cols[0]
        if target not in answers.columns:
            raise CannotConvert(f"answers lack the target column {target!r}")
        answers = answers[[id_col, target]]
        classes: tuple[str, ...] = ()
        if metric.kind == "classification":  # from public data only: a test-only label must not reach prompts
            if target not in train:
                raise CannotConvert(f"train.csv lacks the target column {target!r} to take the class list from")
            classes = tuple(sorted(set(train[target].str.strip())))
            if metric.output == "proba_positive" and len(classes) != 2:
                raise CannotConvert(f"auc-roc needs exactly 2 classes, found {len(classes)}")
    scores = _leaderboard_scores(comp_dir / "leaderboard.csv")
    medals = medal_thresholds(scores, metric.direction)
    provisional = TaskConfig(comp_id, metric.name, metric.direction, metric.kind, id_col, target, tuple(pred_cols),
                             classes, 0.0, 0.0, medals, split, f"mle-bench:{comp_id}")
    with staged_task_dir(dest) as staging:
        (staging / "private").mkdir(parents=True)
        write_csv(answers, staging / "private" / "answers.csv")
        baseline = grade_bytes(Task(staging, provisional), (public / "sample_submission.csv").read_bytes(),
                               _read(staging / "private" / "answers.csv"))
        if not baseline.valid:
            raise CannotConvert(f"the sample submission does not grade: {baseline.reason}")
        if aligned(metric.direction, medals["gold"]) <= aligned(metric.direction, baseline.score):
            raise CannotConvert(f"the gold threshold {medals['gold']} does not beat the sample submission "
                                f"{baseline.score}")
        final = replace(provisional, baseline_score=baseline.score, reference_score=medals["gold"])
        write_config(staging, final, desc_path.read_text())
        for name in PUBLIC_FILES:
            shutil.copyfile(public / name, staging / "public" / name)
        set_modes(staging)
    return load_task(dest)


def import_mlebench(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    competitions_dir: str | os.PathLike | None = None, split: str = "heldout") -> ImportReport:
    """Convert every prepared competition under `data_dir` into tasks under `out_dir`."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"mle-bench data directory {data_dir} does not exist")
    comp_dirs = [Path(competitions_dir)] if competitions_dir is not None else []
    comp_dirs.append(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ImportReport()
    for comp in sorted(p for p in data_dir.iterdir() if (p / "prepared" / "public").is_dir()):
        try:
            convert(comp.name, data_dir, comp_dirs, out_dir / comp.name, split)
            report.converted.append(comp.name)
        except (CannotConvert, TaskError) as exc:
            report.skipped[comp.name] = str(exc)
    return report
