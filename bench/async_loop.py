"""Synchronous vs asynchronous AceGRPO on the demo setting: steps per hour and reward vs wall clock.

One warm-started checkpoint (the demo's behaviour cloning) is copied to one run directory per
mode, so every run starts from the same policy and curriculum: `sync` (the peer), then `async`
at S = 1 and S = 2. Every sandbox execution is made to last at least `--min-execution-s`
(`env.min_execution_s`; real ML executions take minutes), so the time the async producer hides
is visible on a small CPU machine. Steps per hour count the steps after the first (the first
pays the compiles in every mode).

    .venv/bin/python bench/async_loop.py [--steps 6 --min-execution-s 3 --png async_loop.png] [train.length_buckets=[128]]

Last line: `ratio async_steps_per_hour <async at S=2 / sync>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ace_jax.commands.demo import DEMO_CONFIG  # noqa: E402
from ace_jax.config import load_config  # noqa: E402
from ace_jax.train.loop import Trainer  # noqa: E402
from ace_jax.train.warm_checkpoint import write_warm_checkpoint  # noqa: E402

RUNS = (("sync", 0), ("async", 1), ("async", 2))


def config(run_dir: str, args, mode: str = "sync", s: int = 0, warmstart: int = 0):
    return load_config(DEMO_CONFIG, [
        f"train.run_dir={run_dir}", f"train.steps={args.steps}", f"train.warmstart_steps={warmstart}",
        f"train.mode={mode}", f"train.max_staleness={s}", f"train.checkpoint_every={args.steps}",
        f"env.min_execution_s={args.min_execution_s}", *([f"env.workers={args.workers}"] if args.workers else []),
        *args.overrides])


def run_mode(warm: str, root: str, args, mode: str, s: int) -> dict:
    name = mode if mode == "sync" else f"async S={s}"
    run_dir = os.path.join(root, name.replace(" ", "_").replace("=", ""))
    shutil.copytree(warm, run_dir)
    trainer = Trainer(config(run_dir, args, mode, s), echo=lambda line: print(f"  [{name}] {line}", flush=True))
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    records = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    wall, clock = 0.0, []
    for r in records:
        wall += r["step_s"]
        clock.append(wall)
    timed = sum(r["step_s"] for r in records[1:])
    return {"name": name, "steps_per_hour": 3600 * (len(records) - 1) / timed if timed else float("nan"),
            "clock": clock, "reward": [r["reward_mean"] for r in records], "summary": summary}


def plot(results: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for r in results:
        ax.plot(r["clock"], r["reward"], marker="o", ms=3, label=r["name"])
    ax.set_xlabel("wall clock (s, from the first step's start)")
    ax.set_ylabel("mean training reward")
    ax.grid(alpha=0.3)
    ax.legend()
    FigureCanvasAgg(fig).print_png(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--min-execution-s", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=0, help="sandbox slots (default: the demo's)")
    parser.add_argument("--warmstart", type=int, default=150)
    parser.add_argument("--png", default="async_loop.png")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. rollout.states_per_step=2")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="async_loop_")
    try:
        warm = write_warm_checkpoint(config(os.path.join(root, "warm"), args, warmstart=args.warmstart))
        results = [run_mode(warm, root, args, mode, s) for mode, s in RUNS]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    plot(results, args.png)
    print(f"\n{'mode':<12} {'steps/h':>9} {'wall s':>8} {'final reward':>13} {'staleness':>14} "
          f"{'dropped':>8} {'learner idle s':>15}")
    for r in results:
        sm = r["summary"]
        print(f"{r['name']:<12} {r['steps_per_hour']:>9.0f} {r['clock'][-1]:>8.1f} {r['reward'][-1]:>13.3f} "
              f"{json.dumps(sm.get('staleness_histogram', {})):>14} {sm.get('groups_dropped_stale', 0):>8} "
              f"{sm.get('learner_idle_s', float('nan')):>15.1f}")
    print(f"plot: {args.png}")
    sync, s2 = results[0], results[-1]
    print(f"ratio async_steps_per_hour {s2['steps_per_hour'] / sync['steps_per_hour']:.3f}")


if __name__ == "__main__":
    main()
