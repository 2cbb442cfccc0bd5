"""`ace-jax eval (--hf HF_DIR | --run RUN_DIR | --url URL [--api openai|sglang]) --tasks SET [--steps K]`.

The same agent loop, tasks and metrics whatever serves the policy: the embedded engine on a HF
directory or a run's latest checkpoint, or a served model: `--api sglang` speaks SGLang's
/generate on the Qwen3 token ids (ace-jax serve or SGLang), `--api openai` any OpenAI-compatible
/v1/chat/completions with the prompt's messages. The report names the endpoint and model.
"""

from __future__ import annotations

import argparse
import json
import sys

APIS = ("openai", "sglang")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="HF model directory (code mode, Qwen3 tokenizer)")
    src.add_argument("--run", help="run directory (its mode and vocabulary; latest checkpoint)")
    src.add_argument("--url", help="a served model's base URL (code mode), e.g. http://host:30000")
    parser.add_argument("--api", default="openai", choices=APIS,
                        help="with --url: OpenAI chat completions, or SGLang's native /generate")
    parser.add_argument("--model", default=None,
                        help="with --url --api openai: the model id (default: the first /v1/models lists)")
    parser.add_argument("--tasks", default="heldout",
                        help="train | heldout | all | SUITE:SPLIT (contrast:heldout) | a tasks directory (e.g. imported "
                             "MLE-bench tasks)")
    parser.add_argument("--steps", type=int, default=4, help="agent steps per task")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of step 1 (step i: seed + i - 1)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--out", help="write the JSON report here")


def run(args: argparse.Namespace) -> int:
    from ace_jax.evaluate import evaluate
    from ace_jax.train.loop import select_tasks
    from ace_jax.train.run_dir import RunDirError
    from rollout.engine import EngineError
    from rollout.sandbox.base import Limits
    from rollout.sandbox.select import make_sandbox

    if args.model and args.api != "openai":
        print("ace-jax eval: --model names the model of --url --api openai", file=sys.stderr)
        return 2
    try:
        tasks = select_tasks(args.tasks)
        policy, source, max_new = _policy(args, tasks)
    except (RunDirError, ValueError, FileNotFoundError, EngineError) as exc:
        print(f"ace-jax eval: {exc}", file=sys.stderr)
        return 2
    try:
        summary = evaluate(policy, tasks, make_sandbox(args.sandbox), steps=args.steps,
                           temperature=args.temperature, max_new_tokens=max_new,
                           limits=Limits(timeout_s=args.timeout), seed=args.seed)
    except EngineError as exc:
        print(f"ace-jax eval: the policy failed: {exc}", file=sys.stderr)
        return 1
    summary.update(source)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_task"}, indent=2))
    return 0


def _policy(args: argparse.Namespace, tasks: dict) -> tuple[object, dict, int]:
    """(the policy, the report's source fields, max new tokens) for --hf, --run or --url."""
    from ace_jax.agent.codec import make_codec
    from ace_jax.evaluate import ChatPolicy, TokenPolicy
    from ace_jax.inference.engine import JaxEngine
    from ace_jax.train.loop import vocabulary_tasks

    max_new = args.max_new_tokens or 2048
    if args.url:
        source = {"endpoint": args.url, "api": args.api, "checkpoint_step": None}
        if args.api == "openai":
            from rollout.openai_client import OpenAIChatClient
            client = OpenAIChatClient(args.url, args.model)
            return ChatPolicy(client), {**source, "model": client.model}, max_new
        from rollout.sglang import SGLangConfig, SGLangEngine
        engine = SGLangEngine(SGLangConfig(mode="attach", urls=(args.url.rstrip("/"),)))
        info = engine.http.request("GET", f"{engine.urls[0]}/get_model_info", timeout_s=60.0)
        return TokenPolicy(engine, make_codec("code", [])), {**source, "model": info.get("model_path")}, max_new
    if args.run:
        from ace_jax.train.run_dir import read_experiment, restore_model
        experiment = read_experiment(args.run)
        mode = experiment["env"]["mode"]
        run_splits = (experiment["env"]["tasks"], experiment["train"].get("heldout_tasks", "heldout"))   # the run's vocabulary
        model, step = restore_model(args.run)
        max_new = args.max_new_tokens or experiment["rollout"]["max_new_tokens"]
        source = {"model": args.run, "endpoint": None, "checkpoint_step": step}
    else:
        from ace_jax.checkpoint import hf
        mode, model, run_splits = "code", hf.load(args.hf), ()
        source = {"model": args.hf, "endpoint": None, "checkpoint_step": None}
    codec = make_codec(mode, list(vocabulary_tasks(tasks, run_splits).values()) if mode == "spec" else [])
    return TokenPolicy(JaxEngine(model, eos_token_ids=codec.stop_ids), codec), source, max_new
