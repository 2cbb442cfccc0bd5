"""The saved evaluation points of one ablation run (DIR/ARM/seedN/points.json), and which of
them a rerun may keep.

A run writes its points after every evaluation, marked complete after the last one. What a
run's points depend on (its key) is its config and the evaluation plan, but not where the run
lives: a copied or moved ablation directory reuses its finished runs. A run killed part way
resumes from its trainer checkpoint and keeps the points before it (resume is exact, so the
points after it come out as they would have); a run whose earlier points cannot be kept is
moved aside, never overwritten, and trained again from the start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

POINTS_FILE = "points.json"


@dataclass(frozen=True)
class SavedPoints:
    """A run's points as saved: `complete` once its last evaluation is in."""

    points: list[dict[str, Any]]
    complete: bool


def run_key(config: dict[str, Any], eval_every: int, eval_seeds: int) -> str:
    """What a run's points depend on: its config (without `train.run_dir`) and the evaluation plan."""
    config = {**config, "train": {k: v for k, v in config["train"].items() if k != "run_dir"}}
    return json.dumps({"config": config, "eval_every": eval_every, "eval_seeds": eval_seeds},
                      sort_keys=True, default=str)


def load_points(run_dir: str, key: str) -> SavedPoints | None:
    """The points saved in `run_dir` under `key`; None when there are none or their key differs."""
    path = os.path.join(run_dir, POINTS_FILE)
    try:
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") != key:
            return None
        # Files without "complete" were written once, at a run's end, before points were saved as they came.
        return SavedPoints(list(saved["points"]), bool(saved.get("complete", True)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a run's evaluation points ({e}); delete it to run that arm and seed "
                         "again") from e


def save_points(run_dir: str, key: str, points: list[dict[str, Any]], complete: bool) -> None:
    """Write `points` atomically (a kill leaves the previous file)."""
    path = os.path.join(run_dir, POINTS_FILE)
    os.makedirs(run_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"key": key, "complete": complete, "points": points}, f, default=float)
    os.replace(path + ".tmp", path)


def eval_steps(steps: int, eval_every: int) -> list[int]:
    """The steps a run of `steps` training steps is evaluated at."""
    return sorted(set(range(0, steps, eval_every)) | {steps})


def points_before(saved: SavedPoints | None, resumed_step: int, steps: int, eval_every: int) -> list[dict[str, Any]] | None:
    """The saved points a run resumed at `resumed_step` keeps (those before it), or None when
    they cannot make a whole run: a step off the evaluation grid, or a point missing before it."""
    grid = eval_steps(steps, eval_every)
    if resumed_step not in grid:
        return None
    before = [p for p in (saved.points if saved else []) if p["step"] < resumed_step]
    return before if [p["step"] for p in before] == [s for s in grid if s < resumed_step] else None


def move_aside(run_dir: str) -> str:
    """Rename `run_dir` to the first free `<run_dir>.unused-N`; returns the new path."""
    n = 1
    while os.path.exists(f"{run_dir}.unused-{n}"):
        n += 1
    os.rename(run_dir, f"{run_dir}.unused-{n}")
    return f"{run_dir}.unused-{n}"
