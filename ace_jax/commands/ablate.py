"""`ace-jax ablate --config FILE [--seeds N] [--arms ...] --out DIR`: the curriculum ablation
(see ace_jax/train/ablation.py); writes DIR/ablation.md, ablation.csv and ablation.png."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ace_jax.train.ablation import ARMS, AblationPlan

    d = AblationPlan(config=None)
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. configs/experiments/ablation.yaml)")
    parser.add_argument("--seeds", type=int, default=d.seeds, help=f"seeds per arm (default {d.seeds})")
    parser.add_argument("--arms", nargs="+", default=list(d.arms), choices=list(ARMS), metavar="ARM",
                        help=f"arms to run (default: all of {', '.join(ARMS)})")
    parser.add_argument("--out", required=True, help="output directory (runs, ablation.md/.csv/.png)")
    parser.add_argument("--eval-every", type=int, default=d.eval_every, help="training steps between fixed evaluations")
    parser.add_argument("--eval-seeds", type=int, default=d.eval_seeds,
                        help="sampled evaluations per fixed evaluation (plus one greedy)")
    parser.add_argument("--target-metric", default=d.target_metric,
                        help="<heldout|roots>.<greedy|sampled>.<metric> of the fixed evaluation")
    parser.add_argument("--target", type=float, default=d.target, help="value the target metric must reach")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every arm, e.g. train.steps=10")


def run(args: argparse.Namespace) -> int:
    from ace_jax.config import ConfigError
    from ace_jax.train.ablation import AblationPlan, run_ablation

    try:
        plan = AblationPlan(config=args.config, overrides=tuple(args.overrides), arms=tuple(args.arms),
                            seeds=args.seeds, eval_every=args.eval_every, eval_seeds=args.eval_seeds,
                            target_metric=args.target_metric, target=args.target, out=args.out)
        from ace_jax.config import load_config
        load_config(plan.config, list(plan.overrides))   # a bad config fails before any run starts
    except (ConfigError, ValueError) as exc:
        print(f"ace-jax ablate: {exc}", file=sys.stderr)
        return 2
    run_ablation(plan)
    with open(f"{args.out}/ablation.md") as f:
        print(f.read())
    return 0
