"""`ace-jax import --hf HF_DIR --run RUN_DIR [--config FILE]`: start a run from HF weights."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--run", required=True, help="run directory to create")
    parser.add_argument("--config", help="experiment YAML whose optimizer and loss the run will use")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the experiment config")


def run(args: argparse.Namespace) -> int:
    from ace_jax.checkpoint import hf
    from ace_jax.config import ConfigError, load_config
    from ace_jax.train import run_dir as run_files
    from ace_jax.train.optimizer import make_optimizer
    from ace_jax.train.state import create_train_state

    try:
        cfg = load_config(args.config, [*args.overrides, f"model.hf={args.hf}", "model.preset=null",
                                        f"train.run_dir={args.run}"])
        model = hf.load(args.hf)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"ace-jax import: {exc}", file=sys.stderr)
        return 2
    with run_files.checkpointer(args.run) as ckpt:
        if ckpt.latest_step() is not None:
            print(f"ace-jax import: {args.run} already has checkpoints; choose a new run directory", file=sys.stderr)
            return 2
        _, state = create_train_state(model, make_optimizer(cfg.optimizer), seed=cfg.train.seed,
                                      with_reference=cfg.loss.kl_coef > 0)
        run_files.write_run_files(args.run, model.config, cfg.to_dict())
        ckpt.save(0, state, meta={"imported_from": args.hf})
        ckpt.wait()
    print(f"created run {args.run} from {args.hf} (step 0); train with: "
          f"ace-jax train --config <experiment.yaml> train.run_dir={args.run} model.hf={args.hf} model.preset=null")
    return 0
