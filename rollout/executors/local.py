"""The `local` executor: a thread pool on this host, each thread driving one sandbox slot."""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from rollout.executors.base import Executor
from rollout.sandbox.pool import WorkerPool
from rollout.sandbox.select import make_sandbox

T = TypeVar("T")


class LocalExecutor(Executor):
    """`make_sandbox(sandbox)` behind a WorkerPool of `workers` slots."""

    name = "local"

    def __init__(self, sandbox: str = "auto", workers: int = 2, **sandbox_kwargs):
        self.sandbox = make_sandbox(sandbox, **sandbox_kwargs)
        self.sandbox_name = self.sandbox.name
        try:
            self.pool = WorkerPool(self.sandbox, workers)
        except Exception:
            self.sandbox.close()
            raise

    def map(self, fn: Callable[..., T], items: Iterable) -> list[T]:
        return self.pool.map(fn, items)

    def close(self) -> None:
        try:
            self.pool.close()
        finally:
            self.sandbox.close()
