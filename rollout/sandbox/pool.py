"""A worker pool: threads that each drive one sandbox slot, running many executions at once."""

from __future__ import annotations

import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from rollout.sandbox.base import Sandbox

T = TypeVar("T")


class WorkerPool:
    """Runs `fn(sandbox, slot, *args)` calls in parallel, each holding a distinct slot."""

    def __init__(self, sandbox: Sandbox, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.sandbox = sandbox
        self.workers = workers
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(workers):
            self._slots.put(slot)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="sandbox-slot")

    def _call(self, fn: Callable[..., T], args, kwargs) -> T:
        slot = self._slots.get()
        try:
            return fn(self.sandbox, slot, *args, **kwargs)
        finally:
            self._slots.put(slot)

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        """Schedule `fn(sandbox, slot, *args, **kwargs)` on a free slot."""
        return self._executor.submit(self._call, fn, args, kwargs)

    def map(self, fn: Callable[..., T], items: Iterable) -> list[T]:
        """`[fn(sandbox, slot, item) for item in items]`, in parallel, results in order."""
        futures = [self.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
