"""`ace-jax eval (--hf HF_DIR | --run RUN_DIR) --tasks SET [--steps K]`: agent evaluation per task."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="HF model directory (code mode, Qwen3 tokenizer)")
    src.add_argument("--run", help="run directory (its mode and vocabulary; latest checkpoint)")
    parser.add_argument("--tasks", default="heldout", help="train | heldout | all | a tasks directory")
    parser.add_argument("--steps", type=int, default=4, help="agent steps per task")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    from ace_jax.agent.codec import make_codec
    from ace_jax.evaluate import evaluate
    from ace_jax.inference.engine import JaxEngine
    from ace_jax.train.loop import select_tasks, vocabulary_tasks
    from ace_jax.train.run_dir import RunDirError, read_experiment, restore_model
    from rollout.sandbox.base import Limits
    from rollout.sandbox.select import make_sandbox

    try:
        tasks = select_tasks(args.tasks)
        if args.run:
            experiment = read_experiment(args.run)
            mode = experiment["env"]["mode"]
            model, step = restore_model(args.run)
            max_new = args.max_new_tokens or experiment["rollout"]["max_new_tokens"]
        else:
            from ace_jax.checkpoint import hf
            mode, model, step, max_new = "code", hf.load(args.hf), None, args.max_new_tokens or 2048
    except (RunDirError, ValueError, FileNotFoundError) as exc:
        print(f"ace-jax eval: {exc}", file=sys.stderr)
        return 2
    codec = make_codec(mode, list(vocabulary_tasks(tasks).values()))
    engine = JaxEngine(model, eos_token_ids=codec.stop_ids)
    summary = evaluate(engine, codec, tasks, make_sandbox(args.sandbox), steps=args.steps,
                       temperature=args.temperature, max_new_tokens=max_new, limits=Limits(timeout_s=args.timeout))
    summary["checkpoint_step"] = step
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_task"}, indent=2))
    return 0
