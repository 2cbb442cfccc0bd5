"""Repeated executions, as seeds and arms of an ablation repeat them: the persistent execution
cache against running every item (the peer: the worker pool without a cache).

    .venv/bin/python bench/exec_cache.py [--repeats 3] [--workers 2] [--sandbox bwrap]

Each repeat executes the same spec-mode items (4 specs on 2 built-in tasks). Prints a table,
then `ratio exec_cache_speedup_vs_uncached <value>` (uncached wall time / cached wall time).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from ace_jax.train.exec_cache import PersistentExecutionCache
from ace_jax.train.rollouts import _run_one
from rollout.env.prepare import ensure_tasks
from rollout.sandbox.base import Limits
from rollout.sandbox.pool import WorkerPool
from rollout.sandbox.select import make_sandbox

SPECS = ("model=logreg C=1.0", "model=rf n_estimators=50", "model=knn k=5", "model=tree max_depth=3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sandbox", default="auto")
    args = parser.parse_args(argv)
    tasks = ensure_tasks()
    limits = Limits(timeout_s=120)
    items = [(tasks[t], spec, "spec", False, limits, 0.0) for t in ("iris", "wine") for spec in SPECS]
    rows = []
    with make_sandbox(args.sandbox) as sandbox, WorkerPool(sandbox, args.workers) as pool, \
            tempfile.TemporaryDirectory() as cache_dir:
        started = time.perf_counter()
        for _ in range(args.repeats):
            pool.map(_run_one, items)
        rows.append(("uncached (pool only)", args.repeats * len(items), time.perf_counter() - started))
        cache = PersistentExecutionCache(cache_dir)
        started = time.perf_counter()
        for _ in range(args.repeats):
            cache.run(pool, items)
        rows.append(("persistent cache", cache.misses, time.perf_counter() - started))
    print(f"{'mode':24s} {'executions run':>15s} {'wall s':>8s}   ({args.repeats} x {len(items)} items, {sandbox.name})")
    for name, runs, wall in rows:
        print(f"{name:24s} {runs:15d} {wall:8.2f}")
    print(f"ratio exec_cache_speedup_vs_uncached {rows[0][2] / rows[1][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
