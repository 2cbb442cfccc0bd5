"""The task format: a directory with task.yaml, description.md, public/ and private/.

```
<task>/task.yaml          id, metric, direction, columns, baseline/reference scores, medals, split
<task>/description.md     what the agent reads
<task>/public/            train.csv, test.csv, sample_submission.csv (mounted read-only)
<task>/private/answers.csv  the hidden labels: graded outside the sandbox, never mounted
```
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator

import pandas as pd
import yaml

from rollout.env.metrics import aligned, get_metric
from rollout.machine_files import home

PUBLIC_FILES = ("train.csv", "test.csv", "sample_submission.csv")
MEDALS = ("gold", "silver", "bronze")
SPLITS = ("train", "heldout")
OPTIONAL_KEYS = ("references",)


class TaskError(ValueError):
    """A malformed task directory; the message names the file and the key."""


@dataclass(frozen=True)
class TaskConfig:
    """The contents of task.yaml."""

    id: str
    metric: str
    direction: str
    kind: str
    id_column: str
    target_column: str
    submission_columns: tuple[str, ...]
    classes: tuple[str, ...]
    baseline_score: float
    reference_score: float
    medals: dict
    split: str
    source: str
    references: dict = field(default_factory=dict)  # reference solution -> its test score, if measured

    def to_dict(self) -> dict:
        d = asdict(self)
        d["submission_columns"] = list(self.submission_columns)
        d["classes"] = list(self.classes)
        d["medals"] = {k: self.medals[k] for k in MEDALS}
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str = "task.yaml") -> "TaskConfig":
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data and n not in OPTIONAL_KEYS]
        if unknown:
            raise TaskError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(names)}")
        if missing:
            raise TaskError(f"{where}: missing key(s) {', '.join(missing)}")
        cfg = cls(**{**data, "submission_columns": tuple(data["submission_columns"]),
                     "classes": tuple(str(c) for c in data["classes"]),
                     "baseline_score": float(data["baseline_score"]),
                     "reference_score": float(data["reference_score"]),
                     "medals": {k: float(v) for k, v in dict(data["medals"]).items()},
                     "references": {str(k): float(v) for k, v in dict(data.get("references") or {}).items()}})
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "task.yaml") -> None:
        try:
            metric = get_metric(self.metric)
        except KeyError as exc:
            raise TaskError(f"{where}: metric: {exc.args[0]}") from None
        if self.direction != metric.direction:
            raise TaskError(f"{where}: direction {self.direction!r} does not match metric {self.metric} ({metric.direction})")
        if self.kind != metric.kind:
            raise TaskError(f"{where}: kind {self.kind!r} does not match metric {self.metric} ({metric.kind})")
        if self.split not in SPLITS:
            raise TaskError(f"{where}: split {self.split!r}; allowed: {', '.join(SPLITS)}")
        if sorted(self.medals) != sorted(MEDALS):
            raise TaskError(f"{where}: medals must have exactly {', '.join(MEDALS)}")
        if self.kind == "classification" and len(self.classes) < 2:
            raise TaskError(f"{where}: classes: a classification task needs at least 2 classes")
        n_cols = len(self.classes) if metric.output == "proba_columns" else 1
        if len(self.submission_columns) != n_cols:
            raise TaskError(f"{where}: submission_columns: expected {n_cols} column(s) for {self.metric}")
        if aligned(self.direction, self.reference_score) <= aligned(self.direction, self.baseline_score):
            raise TaskError(f"{where}: reference_score must be better than baseline_score")


@dataclass(frozen=True)
class Task:
    """A prepared task on disk."""

    root: Path
    config: TaskConfig

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def public_dir(self) -> Path:
        return self.root / "public"

    @property
    def answers_path(self) -> Path:
        return self.root / "private" / "answers.csv"

    @property
    def description(self) -> str:
        return (self.root / "description.md").read_text()

    def template_info(self) -> dict:
        """What a rendered solution script needs to know about the task (no private data)."""
        c = self.config
        return {"metric": c.metric, "kind": c.kind, "output": get_metric(c.metric).output,
                "classes": list(c.classes), "id_column": c.id_column, "target_column": c.target_column,
                "submission_columns": list(c.submission_columns)}

    def medal(self, score: float | None) -> str | None:
        """The best medal `score` reaches, or None."""
        if score is None:
            return None
        for name in MEDALS:
            if aligned(self.config.direction, score) >= aligned(self.config.direction, self.config.medals[name]):
                return name
        return None


def default_tasks_dir(path: str | os.PathLike | None = None) -> Path:
    """Where tasks live: `path`, else $ACE_JAX_HOME/tasks, else ~/.cache/ace-jax/tasks."""
    if path is not None:
        return Path(path)
    return home() / "tasks"


def load_task(root: str | os.PathLike) -> Task:
    """Read and check one task directory."""
    root = Path(root)
    cfg_path = root / "task.yaml"
    if not cfg_path.is_file():
        raise TaskError(f"{cfg_path}: not found")
    data = yaml.safe_load(cfg_path.read_text())
    if not isinstance(data, dict):
        raise TaskError(f"{cfg_path}: expected a mapping")
    config = TaskConfig.from_dict(data, str(cfg_path))
    for rel in ["description.md", "private/answers.csv"] + [f"public/{f}" for f in PUBLIC_FILES]:
        if not (root / rel).is_file():
            raise TaskError(f"{root / rel}: missing (task {config.id})")
    return Task(root, config)


@contextlib.contextmanager
def staged_task_dir(dest: Path) -> Iterator[Path]:
    """A hidden directory beside `dest` to write a task into: on success it replaces `dest`; on any
    failure it is removed, so that no half-written task (provisional scores) is left behind."""
    staging = dest.parent / f".staging-{dest.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(staging, dest)


def load_tasks(root: str | os.PathLike) -> dict[str, Task]:
    """All tasks under `root`, by id, sorted. Hidden directories are skipped: a preparation that
    was killed leaves its `.staging-*` directory there, with provisional scores."""
    root = Path(root)
    tasks = {}
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.name.startswith(".") and (path / "task.yaml").is_file():
            task = load_task(path)
            tasks[task.id] = task
    return tasks


def set_modes(dest: str | os.PathLike) -> None:
    """public/ world-readable (sandboxed scripts run as other uids), private/ owner-only."""
    dest = Path(dest)
    for path in [dest, dest / "public", *(dest / "public").iterdir(), dest / "task.yaml", dest / "description.md"]:
        if path.exists():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    private = dest / "private"
    os.chmod(private, 0o700)
    for path in private.iterdir():
        os.chmod(path, 0o600)


def write_config(dest: str | os.PathLike, config: TaskConfig, description: str) -> None:
    """Write task.yaml and description.md (creating public/ and private/)."""
    config.validate(f"task {config.id}")
    dest = Path(dest)
    (dest / "public").mkdir(parents=True, exist_ok=True)
    (dest / "private").mkdir(parents=True, exist_ok=True)
    (dest / "task.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (dest / "description.md").write_text(description.rstrip() + "\n")


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """The one CSV style of prepared tasks (no index, \\n line ends, 10 significant digits)."""
    frame.to_csv(path, index=False, lineterminator="\n", float_format="%.10g")


def write_task(dest: str | os.PathLike, config: TaskConfig, description: str, train: pd.DataFrame,
               test: pd.DataFrame, sample: pd.DataFrame, answers: pd.DataFrame) -> Task:
    """Write a task directory deterministically (same inputs, same bytes)."""
    dest = Path(dest)
    write_config(dest, config, description)
    write_csv(train, dest / "public" / "train.csv")
    write_csv(test, dest / "public" / "test.csv")
    write_csv(sample, dest / "public" / "sample_submission.csv")
    write_csv(answers, dest / "private" / "answers.csv")
    set_modes(dest)
    return Task(dest, config)
