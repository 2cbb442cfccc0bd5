"""TensorBoard event files beside `metrics.jsonl`, with the same scalars (tensorboardX).

Each numeric field of a step record becomes a scalar at that step; nested dicts (the
curriculum metrics) are flattened to `section/key`. Lists (histograms) and text are skipped.
A resumed run purges events of steps at or after the resume step, as `MetricsFile` does.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator

TENSORBOARD_DIR = "tensorboard"


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every finite number in `record`, nested dicts flattened with '/'."""
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, f"{tag}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            if math.isfinite(value):
                yield tag, float(value)


class TensorBoardWriter:
    """Writes step records as scalars to `run_dir/tensorboard`."""

    def __init__(self, run_dir: str | os.PathLike, start_step: int = 0):
        from tensorboardX import SummaryWriter

        self.logdir = os.path.join(os.fspath(run_dir), TENSORBOARD_DIR)
        self.writer = SummaryWriter(self.logdir, purge_step=start_step if start_step > 0 else None)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
