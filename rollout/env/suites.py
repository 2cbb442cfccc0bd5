"""The built-in task suites: `core` (the demo's tasks) and `contrast` (tasks whose best answer
depends on the task). Each suite is prepared into a directory of its own, so that a suite's
splits never mix with another's.

Users name a suite's split as `train`, `heldout`, `all` (the core suite) or `SUITE:SPLIT`
(`contrast:train`, `contrast:heldout`, `contrast:all`) wherever a split is accepted
(`env.tasks`, `train.heldout_tasks`, `ace-jax eval --tasks`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rollout.env.builtin_tasks import BUILTIN_TASKS, BUILTIN_VERSION, BuiltinTask
from rollout.env.contrast_tasks import CONTRAST_TASKS, CONTRAST_VERSION
from rollout.machine_files import home

SPLIT_NAMES = ("train", "heldout", "all")


@dataclass(frozen=True)
class Suite:
    """A named set of built-in tasks with its own version and directory."""

    name: str
    tasks: tuple[BuiltinTask, ...]
    version: int

    @property
    def stem(self) -> str:
        """A prepared task's `source` without its version (the core suite keeps its historical one)."""
        return "builtin" if self.name == "core" else f"builtin-{self.name}"

    @property
    def source(self) -> str:
        """What a prepared task's `source` says: the stem and the suite's version."""
        return f"{self.stem}-v{self.version}"

    def default_dir(self) -> Path:
        """$ACE_JAX_HOME/tasks for the core suite, $ACE_JAX_HOME/tasks-NAME for the others."""
        return home() / ("tasks" if self.name == "core" else f"tasks-{self.name}")


SUITES: dict[str, Suite] = {s.name: s for s in (Suite("core", BUILTIN_TASKS, BUILTIN_VERSION),
                                                Suite("contrast", CONTRAST_TASKS, CONTRAST_VERSION))}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown task suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]


def parse_split(spec: str) -> tuple[Suite, str] | None:
    """(suite, split) for `train` / `heldout` / `all` / `SUITE:SPLIT`; None for anything else (a
    directory). A `SUITE:SPLIT` with an unknown suite or split raises, naming what is allowed."""
    if spec in SPLIT_NAMES:
        return SUITES["core"], spec
    name, colon, split = spec.partition(":")
    if not colon:
        return None
    if name not in SUITES and os.path.exists(spec):   # a directory whose name has a colon
        return None
    if name not in SUITES or split not in SPLIT_NAMES:
        raise ValueError(f"task split {spec!r}: expected SUITE:SPLIT with SUITE one of {', '.join(SUITES)} and "
                         f"SPLIT one of {', '.join(SPLIT_NAMES)}")
    return SUITES[name], split


def suite_of_source(source: str) -> Suite | None:
    """The suite a prepared task came from, by its `source` string (any version), or None."""
    stem = source.rpartition("-v")[0]
    return next((suite for suite in SUITES.values() if suite.stem == stem), None)
