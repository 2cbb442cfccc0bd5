"""Executors: where the trainer's sandboxed executions run (`local` threads or `ray` actors)."""

from rollout.executors.base import EXECUTORS, Executor, make_executor

__all__ = ["EXECUTORS", "Executor", "make_executor"]
