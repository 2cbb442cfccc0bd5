"""`ace-jax report RUN_DIR`: a run's metrics as a table, and its training plot redrawn."""

from __future__ import annotations

import argparse
import json
import os
import sys

COLUMNS = (("step", "{:>5}"), ("reward_mean", "{:>8.3f}"), ("valid_rate", "{:>7.2f}"), ("success_rate", "{:>8.2f}"),
           ("best_q", "{:>7.3f}"), ("informative_groups", "{:>5}"), ("loss", "{:>9.4f}"), ("buffer_size", "{:>7}"),
           ("step_s", "{:>7.1f}"))
HEADERS = ("step", "reward", "valid", "success", "best q", "info", "loss", "buffer", "s/step")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")


def run(args: argparse.Namespace) -> int:
    from ace_jax.train.plots import plot_training

    path = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        print(f"ace-jax report: {path} does not exist (is {args.run_dir} a run directory?)", file=sys.stderr)
        return 2
    with open(path) as f:
        history = [json.loads(line) for line in f if line.strip()]
    widths = [len(fmt.format(0)) for _, fmt in COLUMNS]
    print(" ".join(h.rjust(w) for h, w in zip(HEADERS, widths)))
    for record in history:
        cells = []
        for (key, fmt), w in zip(COLUMNS, widths):
            value = record.get(key)
            cells.append(fmt.format(value) if value is not None else "-".rjust(w))
        print(" ".join(cells))
    if history:
        print(f"plot: {plot_training(history, os.path.join(args.run_dir, 'training.png'))}")
    return 0
