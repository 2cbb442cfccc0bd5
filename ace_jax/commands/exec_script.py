"""`ace-jax exec --task ID --script FILE`: run one script against one task, print a JSON result."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rollout.sandbox.select import CHOICES

    parser.add_argument("--task", required=True, help="task id (see `ace-jax tasks list`)")
    parser.add_argument("--script", required=True, help="python script to run (with --spec: a file holding a spec)")
    parser.add_argument("--sandbox", default="auto", choices=CHOICES, help="sandbox backend (default: auto)")
    parser.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit in seconds")
    parser.add_argument("--memory-mb", type=int, default=4096, help="memory limit in MB")
    parser.add_argument("--spec", action="store_true", help="the file holds a tiny-model spec, not a script")
    parser.add_argument("--force-unisolated", action="store_true",
                        help="allow the subprocess sandbox, which does not isolate the script")
    parser.add_argument("--dir", default=None, help="tasks directory")


def run(args: argparse.Namespace) -> int:
    from rollout.env.execute import execute, step
    from rollout.env.prepare import ensure_tasks
    from rollout.sandbox.base import Limits, SandboxError
    from rollout.sandbox.select import make_sandbox

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    tasks = ensure_tasks(args.dir, progress=lambda m: print(m, file=sys.stderr, flush=True))
    if args.task not in tasks:
        print(f"unknown task {args.task!r}; known: {', '.join(tasks)}", file=sys.stderr)
        return 2
    try:
        with open(args.script) as f:
            text = f.read()
    except OSError as exc:
        print(f"cannot read --script {args.script}: {exc.strerror}", file=sys.stderr)
        return 2
    limits = Limits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    try:
        sandbox = make_sandbox(args.sandbox, force_unisolated=args.force_unisolated)
    except SandboxError as exc:
        print(f"sandbox {args.sandbox}: {exc}", file=sys.stderr)
        return 2
    with sandbox:
        task = tasks[args.task]
        if args.spec:
            result = step(task, text, sandbox, mode="spec", limits=limits)
        else:
            result = execute(task, text, sandbox, limits=limits)
    print(json.dumps(result.to_dict(), indent=2))
    return 0
