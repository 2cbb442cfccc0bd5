"""Executions per second of a trivial script on each sandbox backend (bwrap, docker, subprocess),
and through the executors: `local` (threads here) and `ray` (actors on a local Ray cluster) at
1 and 2 actors of one slot each, on the bwrap backend.

    .venv/bin/python bench/sandbox.py [--runs 20] [--workers 1] [--executors local ray]

Prints a table, then `ratio sandbox_ray_vs_local_exec_per_s <value>` (2 actors against the
local executor with 2 slots; without executors, `ratio sandbox_bwrap_exec_per_s <value>`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rollout.executors import EXECUTORS, Executor, make_executor
from rollout.sandbox.base import Limits
from rollout.sandbox.pool import WorkerPool
from rollout.sandbox.select import BACKENDS, make_sandbox

TRIVIAL = "open('submission.csv', 'w').write('id,y\\n1,0\\n')\n"


def _one(sandbox, slot, data_dir):
    res = sandbox.run(TRIVIAL, data_dir, Limits(timeout_s=60), slot)
    if not res.ok or res.submission is None:
        raise RuntimeError(f"{sandbox.name}: trivial script failed: {res.failure_reason()} {res.stderr_tail[-300:]}")
    return res.runtime_s


def _timed(pool: WorkerPool | Executor, runs: int, warmup: int, data_dir: Path) -> tuple[float, float]:
    """(executions per second, mean latency in seconds) of `runs` trivial executions on `pool`."""
    pool.map(_one, [data_dir] * warmup)  # warm up (docker image, uids, page cache, actor data)
    start = time.perf_counter()
    latencies = pool.map(_one, [data_dir] * runs)
    elapsed = time.perf_counter() - start
    return runs / elapsed, sum(latencies) / len(latencies)


def measure(name: str, runs: int, workers: int, data_dir: Path) -> tuple[float, float]:
    """(executions per second, mean latency in seconds) for backend `name`."""
    with make_sandbox(name, force_unisolated=True) as sandbox, WorkerPool(sandbox, workers) as pool:
        return _timed(pool, runs, workers, data_dir)


def measure_executor(name: str, runs: int, slots: int, data_dir: Path) -> tuple[float, float]:
    """The same through executor `name`: `local` with `slots` threads, `ray` with `slots` actors."""
    kwargs = {"ray_actors": slots} if name == "ray" else {}
    with make_executor(name, "bwrap", 1 if name == "ray" else slots, **kwargs) as executor:
        return _timed(executor, runs, slots, data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--executors", nargs="*", default=list(EXECUTORS), choices=EXECUTORS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        data_dir.chmod(0o755)
        (data_dir / "train.csv").write_text("id,x\n1,0\n")
        (data_dir / "train.csv").chmod(0o644)
        rows = []
        for name in args.backends:
            print(f"measuring {name} ({args.runs} runs, {args.workers} worker(s))", file=sys.stderr, flush=True)
            rows.append((name, *measure(name, args.runs, args.workers, data_dir)))
        for name in args.executors:
            for slots in (1, 2):
                label = f"{name} x{slots}" + (" actor" if name == "ray" else " slot")
                print(f"measuring {label} ({args.runs} runs)", file=sys.stderr, flush=True)
                rows.append((label, *measure_executor(name, args.runs, slots, data_dir)))
    print(f"{'backend / executor':<22}{'exec/s':>10}{'latency ms':>12}")
    for name, rate, latency in rows:
        print(f"{name:<22}{rate:>10.2f}{latency * 1000:>12.1f}")
    rates = {name: rate for name, rate, _ in rows}
    if "ray x2 actor" in rates and "local x2 slot" in rates:
        print(f"ratio sandbox_ray_vs_local_exec_per_s {rates['ray x2 actor'] / rates['local x2 slot']:.3f}")
    else:
        print(f"ratio sandbox_bwrap_exec_per_s {rates.get('bwrap', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
