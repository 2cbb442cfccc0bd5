"""Executions per second of a trivial script on each sandbox backend (bwrap, docker, subprocess).

    .venv/bin/python bench/sandbox.py [--runs 20] [--workers 1]

Prints a table, then `ratio sandbox_bwrap_exec_per_s <value>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rollout.sandbox.base import Limits
from rollout.sandbox.pool import WorkerPool
from rollout.sandbox.select import BACKENDS, make_sandbox

TRIVIAL = "open('submission.csv', 'w').write('id,y\\n1,0\\n')\n"


def _one(sandbox, slot, data_dir):
    res = sandbox.run(TRIVIAL, data_dir, Limits(timeout_s=60), slot)
    if not res.ok or res.submission is None:
        raise RuntimeError(f"{sandbox.name}: trivial script failed: {res.failure_reason()} {res.stderr_tail[-300:]}")
    return res.runtime_s


def measure(name: str, runs: int, workers: int, data_dir: Path) -> tuple[float, float]:
    """(executions per second, mean latency in seconds) for backend `name`."""
    with make_sandbox(name, force_unisolated=True) as sandbox, WorkerPool(sandbox, workers) as pool:
        pool.map(_one, [data_dir] * workers)  # warm up (docker image, uids, page cache)
        start = time.perf_counter()
        latencies = pool.map(_one, [data_dir] * runs)
        elapsed = time.perf_counter() - start
    return runs / elapsed, sum(latencies) / len(latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
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
    print(f"{'backend':<12}{'exec/s':>10}{'latency ms':>12}")
    for name, rate, latency in rows:
        print(f"{name:<12}{rate:>10.2f}{latency * 1000:>12.1f}")
    bwrap = next((rate for name, rate, _ in rows if name == "bwrap"), float("nan"))
    print(f"ratio sandbox_bwrap_exec_per_s {bwrap:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
