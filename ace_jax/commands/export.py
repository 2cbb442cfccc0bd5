"""`ace-jax export --run RUN_DIR [--step N] --out HF_DIR`: a run's policy in Hugging Face format."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory (ace-jax train / import)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest complete one)")
    parser.add_argument("--out", required=True, help="output HF directory")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--max-shard-size", default="5GB")


def run(args: argparse.Namespace) -> int:
    from ace_jax.checkpoint import hf
    from ace_jax.train.run_dir import RunDirError, read_experiment, restore_model

    try:
        model, step = restore_model(args.run, args.step)
        source = read_experiment(args.run).get("model", {}).get("hf")
    except (RunDirError, FileNotFoundError) as exc:
        print(f"ace-jax export: {exc}", file=sys.stderr)
        return 2
    files = hf.save(model, args.out, max_shard_size=args.max_shard_size, dtype=args.dtype, tokenizer_dir=source)
    if not source and model.config.vocab_size >= 151643:
        from ace_jax.tokenizer import save_qwen3_tokenizer
        save_qwen3_tokenizer(args.out)
    print(f"exported step {step} of {args.run} to {args.out} ({len(files)} safetensors files, {args.dtype})")
    return 0
