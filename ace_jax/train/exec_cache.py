"""The persistent execution cache behind the training loop's `cache.run(pool, items)`.

A drop-in for `ace_jax.train.rollouts.ExecutionCache`: identical items of one call run once
(counted as hits), and every execution goes through the shared on-disk store of
`rollout.exec_cache` (content-addressed by task data, script, limits, solution environment
and backend), so repeated scripts across steps, seeds, arms and runs execute once.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ace_jax.train.rollouts import ExecutionCache, _run_one
from rollout.exec_cache import DEFAULT_MAX_MB, CachingSandbox, ExecutionStore
from rollout.sandbox.base import Sandbox


class PersistentExecutionCache:
    """`run(pool, items)` -> step results, executions shared across runs and processes."""

    def __init__(self, directory: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_MB << 20):
        self.store = ExecutionStore(directory, max_bytes)
        self._sandboxes: dict[int, CachingSandbox] = {}
        self._lock = threading.Lock()
        self.duplicates = 0  # items that repeated another item of the same call

    def _wrapped(self, sandbox: Sandbox) -> CachingSandbox:
        with self._lock:
            if id(sandbox) not in self._sandboxes:
                self._sandboxes[id(sandbox)] = CachingSandbox(sandbox, self.store)
            return self._sandboxes[id(sandbox)]

    def run(self, pool, items: list, run_one=_run_one) -> list:
        """Each distinct item once through `run_one(sandbox, slot, item)`, its sandbox behind the store."""
        keys = [ExecutionCache.key(it) for it in items]
        unique = dict(zip(keys, items))
        with self._lock:  # rounds may run at once (async)
            self.duplicates += len(items) - len(unique)
        cached_run = lambda sandbox, slot, item: run_one(self._wrapped(sandbox), slot, item)  # noqa: E731
        done = dict(zip(unique, pool.map(cached_run, list(unique.values()))))
        return [done[k] for k in keys]

    @property
    def hits(self) -> int:
        """Executions answered without running: from the store or a repeat within a call."""
        return self.duplicates + sum(s.hits for s in self._sandboxes.values())

    @property
    def misses(self) -> int:
        """Executions that ran in the sandbox."""
        return sum(s.misses for s in self._sandboxes.values())

    def stats(self) -> dict[str, Any]:
        hits, misses = self.hits, self.misses
        return {"exec_cache_hits": hits, "exec_cache_misses": misses,
                "exec_cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0}


def make_execution_cache(enabled: bool, directory: str = "",
                         max_mb: int = DEFAULT_MAX_MB) -> PersistentExecutionCache | None:
    """The loop's cache: None when off, else persistent under `directory` (default dir if "")."""
    return PersistentExecutionCache(directory or None, max_mb << 20) if enabled else None
