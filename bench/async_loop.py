"""Synchronous vs asynchronous AceGRPO on the demo setting: steps per hour and reward vs wall clock.

One warm-started checkpoint (the demo's behaviour cloning) is copied to one run directory per
mode, so every run starts from the same policy, curriculum and seeds: `sync` (the peer), then
`async` at S = 1 and S = 2. Every graded response is made to last at least `--min-execution-s`
(`env.min_execution_s`; real ML executions take minutes), whether or not it was valid, and the
execution cache is off (a cache hit costs nothing, and later runs would hit what earlier ones
ran), so a step costs the same whatever the policy's validity rate as long as the floor exceeds
a real execution's own time. `--workers` sandbox slots run a round's 32 gradings (8: four
waves). Steps per hour are the steady-state rate after the first S_max + 1 = 3 steps (the first
pays the compiles in every mode, and an async run fills its pipeline during it, so a step just
after it may be almost free); `exec/h` is the sandbox executions per hour, the work actually
done. The reward table and the PNG show the running mean training reward (last 5 steps)
against wall-clock time from the first step's start.

What bounds the speed-up: async hides generation and the update behind executions, so the
best ratio is (generate + execute + update) / max(generate + update, execute). On a shared
2-core machine the demo's executions are CPU work (model fits in sandboxes), not waits: at load
~25 a round's executions took ~55 s against ~1 s of generation and ~1-5 s of update, which
caps the ratio near 1.1 at equal executions; a step with fewer valid responses is cheaper, so
compare `exec/h` before reading a ratio.

    nice -n 10 .venv/bin/python bench/async_loop.py [--steps 12 --min-execution-s 3 --workers 8 --png async_loop.png]
        [--out DIR (keep the runs' metrics)] [--report --out DIR (the report of kept runs)]

Last line: `ratio async_steps_per_hour <async at S=2 / sync>`.
"""

from __future__ import annotations

import argparse
import itertools
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
SMOOTH = 5
STEADY_FROM = 1 + max(s for _, s in RUNS)  # steps left out of the rate: compiles + pipeline fill


def config(run_dir: str, args, mode: str = "sync", s: int = 0, warmstart: int = 0):
    return load_config(DEMO_CONFIG, [
        f"train.run_dir={run_dir}", f"train.steps={args.steps}", f"train.warmstart_steps={warmstart}",
        f"train.mode={mode}", f"train.max_staleness={s}", f"train.checkpoint_every={args.steps}",
        f"env.min_execution_s={args.min_execution_s}", f"env.workers={args.workers}",
        "env.cache_executions=false", f"env.exec_cache_dir={os.path.join(run_dir, 'exec-cache')}",
        "train.heldout_eval=false", *args.overrides])


def run_name(mode: str, s: int) -> str:
    return mode if mode == "sync" else f"async S={s}"


def file_stem(name: str) -> str:
    return name.replace(" ", "_").replace("=", "")


def run_mode(warm: str, root: str, out: str, args, mode: str, s: int) -> dict:
    """Train one mode from the warm checkpoint; its metrics and summary are kept in `out`."""
    name = run_name(mode, s)
    run_dir = os.path.join(root, file_stem(name))
    shutil.copytree(warm, run_dir)
    trainer = Trainer(config(run_dir, args, mode, s), echo=lambda line: print(f"  [{name}] {line}", flush=True))
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    shutil.copy(os.path.join(run_dir, "metrics.jsonl"), os.path.join(out, f"{file_stem(name)}.jsonl"))
    with open(os.path.join(out, f"{file_stem(name)}.summary.json"), "w") as f:
        json.dump({**summary, "load_5min": os.getloadavg()[1]}, f, indent=1)
    return load_result(out, name)


def load_result(out: str, name: str) -> dict:
    """One mode's figures from its kept metrics.jsonl and summary."""
    records = [json.loads(x) for x in open(os.path.join(out, f"{file_stem(name)}.jsonl"))]
    with open(os.path.join(out, f"{file_stem(name)}.summary.json")) as f:
        summary = json.load(f)
    clock = list(itertools.accumulate(r["step_s"] for r in records))
    rewards = [r["reward_mean"] for r in records]
    return {"name": name, "steps_per_hour": steady_steps_per_hour(clock), "clock": clock, "reward": rewards,
            "smooth": running_mean(rewards, SMOOTH), "executions": sum(r["executions"] for r in records),
            "summary": summary, "load": summary.get("load_5min", float("nan"))}


def steady_steps_per_hour(clock: list[float], skip: int = STEADY_FROM) -> float:
    """Steps per hour after the first `skip` steps: the first pays the compiles, and an async run
    fills its pipeline during it (a step after it may be almost free), so both are left out."""
    if len(clock) <= skip:  # a run stopped early (SIGTERM): reported, without a rate
        return float("nan")
    return 3600 * (len(clock) - skip) / (clock[-1] - clock[skip - 1])


def running_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last `window` values at each position (fewer at the start)."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def reward_at(result: dict, t: float) -> float | None:
    """The running-mean reward of the last step finished by wall time `t` (None before the first)."""
    done = [i for i, c in enumerate(result["clock"]) if c <= t]
    return result["smooth"][done[-1]] if done else None


def reward_table(results: list[dict], points: int = 8) -> list[str]:
    """Running-mean reward of every mode at evenly spaced wall times up to the slowest run's end."""
    end = max(r["clock"][-1] for r in results)
    lines = [f"{'wall s':>8} " + " ".join(f"{r['name']:>12}" for r in results)]
    for k in range(1, points + 1):
        t = end * k / points
        cells = [reward_at(r, t) for r in results]
        lines.append(f"{t:>8.0f} " + " ".join(f"{'-' if c is None else f'{c:.3f}':>12}" for c in cells))
    return lines


def plot(results: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for r in results:
        ax.plot(r["clock"], r["smooth"], marker="o", ms=3, label=r["name"])
    ax.set_xlabel("wall clock (s, from the first step's start)")
    ax.set_ylabel(f"training reward (running mean of {SMOOTH} steps)")
    ax.grid(alpha=0.3)
    ax.legend()
    FigureCanvasAgg(fig).print_png(path)


def report(results: list[dict], png: str) -> None:
    plot(results, png)
    print(f"\n{'mode':<12} {'steps/h':>9} {'wall s':>8} {'executions':>10} {'exec/h':>7} {'final reward':>13} {'staleness':>14} "
          f"{'dropped':>8} {'learner idle s':>15} {'producer idle s':>16} {'load (5 min)':>13}")
    for r in results:
        sm = r["summary"]
        print(f"{r['name']:<12} {r['steps_per_hour']:>9.0f} {r['clock'][-1]:>8.1f} {r['executions']:>10} "
              f"{3600 * r['executions'] / r['clock'][-1]:>7.0f} "
              f"{r['smooth'][-1]:>13.3f} {json.dumps(sm.get('staleness_histogram', {})):>14} "
              f"{sm.get('groups_dropped_stale', 0):>8} {sm.get('learner_idle_s', float('nan')):>15.1f} "
              f"{sm.get('producer_idle_s', float('nan')):>16.1f} {r['load']:>13.1f}")
    print(f"(steps/h: steady state, steps {STEADY_FROM + 1}.. of each run; wall s, exec/h: the whole run; "
          f"executions: sandbox runs, valid responses only)")
    print(f"\ntraining reward (running mean of {SMOOTH} steps) against wall clock:")
    print("\n".join(reward_table(results)))
    print(f"plot: {png}")
    sync, s2 = results[0], results[-1]
    print(f"ratio async_steps_per_hour {s2['steps_per_hour'] / sync['steps_per_hour']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--min-execution-s", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=8, help="sandbox slots (env.workers)")
    parser.add_argument("--warmstart", type=int, default=150)
    parser.add_argument("--png", default="async_loop.png")
    parser.add_argument("--out", default="", help="keep each run's metrics.jsonl and summary here")
    parser.add_argument("--report", action="store_true", help="only print the report of the runs kept in --out")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. rollout.states_per_step=2")
    args = parser.parse_args()
    if args.report:
        if not args.out:
            parser.error("--report needs --out (the folder the runs were kept in)")
        return report([load_result(args.out, run_name(m, s)) for m, s in RUNS], args.png)
    root = tempfile.mkdtemp(prefix="async_loop_")
    out = args.out or os.path.join(root, "kept")
    os.makedirs(out, exist_ok=True)
    try:
        warm = write_warm_checkpoint(config(os.path.join(root, "warm"), args, warmstart=args.warmstart))
        results = [run_mode(warm, root, out, args, mode, s) for mode, s in RUNS]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(results, args.png)


if __name__ == "__main__":
    main()
