"""`metrics.jsonl`: one JSON line per training step, consistent with the checkpoint on resume.

A run killed between checkpoints has written lines for steps that the resumed run computes
again; opening the file at the resumed step drops them first (an atomic rewrite), so every
step appears exactly once and matches an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of a metrics file (a torn last line, from a kill, is skipped)."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsFile:
    """Appends step records to `path`, after dropping records of steps >= `start_step`."""

    def __init__(self, path: str | os.PathLike, start_step: int = 0):
        self.path = os.fspath(path)
        records = read_metrics(self.path)
        kept = [r for r in records if int(r.get("step", -1)) < start_step]
        self.dropped = len(records) - len(kept)  # lines of steps the checkpoint does not hold
        if os.path.exists(self.path):
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
