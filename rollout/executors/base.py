"""The executor interface between the trainer and the sandboxes, and choosing one by name.

The trainer calls `executor.map(fn, items)`: `[fn(sandbox, slot, item) for item in items]`,
in parallel, in order. `fn` runs in the trainer's process (it parses, grades and computes the
reward there, next to the private answers); only `sandbox.run(...)` may run elsewhere.
"""

from __future__ import annotations

import abc
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
EXECUTORS = ("local", "ray")


class Executor(abc.ABC):
    """Runs `fn(sandbox, slot, item)` over items in parallel; results in order."""

    name: str = "base"
    sandbox_name: str = ""
    retries: int = 0  # executions re-run after an actor or host failed

    @abc.abstractmethod
    def map(self, fn: Callable[..., T], items: Iterable) -> list[T]:
        """`[fn(sandbox, slot, item) for item in items]`, in parallel, results in order."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the workers and release the sandboxes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_executor(name: str, sandbox: str = "auto", workers: int = 2, *, ray_address: str = "",
                  ray_actors: int = 1, **sandbox_kwargs) -> Executor:
    """Executor `name` ("local" or "ray") running backend `sandbox` on `workers` slots (per actor)."""
    if name == "local":
        from rollout.executors.local import LocalExecutor
        return LocalExecutor(sandbox, workers, **sandbox_kwargs)
    if name == "ray":
        from rollout.executors.ray_executor import RayExecutor
        return RayExecutor(sandbox, workers, actors=ray_actors, address=ray_address, **sandbox_kwargs)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
