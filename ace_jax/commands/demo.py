"""`ace-jax demo`: the main job on the embedded defaults (CPU, tiny MoE, built-in tasks)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=3")


def run(args: argparse.Namespace) -> int:
    import time

    from ace_jax.commands.train import train_from

    started = time.perf_counter()
    code = train_from(str(DEMO_CONFIG) if DEMO_CONFIG.is_file() else None, args.overrides)
    print(f"demo wall time: {time.perf_counter() - started:.0f} s")
    return code
