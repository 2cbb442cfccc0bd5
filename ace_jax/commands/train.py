"""`ace-jax train --config FILE [key=value ...]`: run AceGRPO training (resumes a run dir)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (configs/experiments/...)")
    parser.add_argument("--steps", type=int, help="train until this many steps (default: train.steps)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=5 loss.eps_high=0.3")


def train_from(config_path: str | None, overrides: list[str], steps: int | None = None) -> int:
    from ace_jax.config import ConfigError, load_config
    from ace_jax.train.loop import Trainer
    from rollout.sandbox.base import SandboxRefused

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"ace-jax train: {exc}", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(cfg)
    except ConfigError as exc:
        print(f"ace-jax train: {exc}", file=sys.stderr)
        return 2
    except SandboxRefused as exc:
        print(f"ace-jax train: no usable sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run(steps)
    finally:
        trainer.close()
    print(json.dumps(summary, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    return train_from(args.config, args.overrides, args.steps)
