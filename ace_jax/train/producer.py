"""The rollout producer of train.mode async: one thread ahead of the learner.

It is the single owner of the engine and of the curriculum while it runs: it takes new weights
between generations, samples states, generates (admitted by the `StalenessGate`), hands each
round's executions to a thread of its own (up to S + 1 rounds execute at once, sharing the
worker pool's slots), records finished rounds into the buffer in order, and queues them for the learner with the version they were
generated with and a snapshot of the curriculum that a checkpoint at that step restores.

When a round is recorded is fixed, not left to timing: round j is sampled from a curriculum
that holds exactly rounds 0 .. j - S - 1 (S = `max_staleness`). Round k is recorded, waiting
for its executions if they are still running, right after round k + S has been generated, the
last moment before update k needs it (and the admission of round k + S + 1 waits for update k
anyway, so waiting costs nothing). Recording a round the moment it finished would make the
states sampled next depend on how fast executions ran: runs could not be repeated, and the
processes of a multi-host run, whose executions finish at different times, would sample
different states.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from ace_jax.train.rollouts import Generated, RolloutRound
from ace_jax.train.staleness import StalenessGate

_POLL_S = 0.01


class RoundMaker(Protocol):
    """What the producer drives (the Trainer): the four phases of a round, and the engine."""

    engine: Any

    def sample_round(self, step: int) -> tuple[np.ndarray, list]: ...
    def generate_round(self, step: int, ids, states) -> Generated: ...
    def execute_round(self, generated: Generated) -> RolloutRound: ...
    def record_round(self, step: int, ids, rollouts: RolloutRound, rollout_s: float) -> dict[str, Any]: ...
    def curriculum_state(self) -> Any: ...


@dataclasses.dataclass
class Round:
    """A finished round as the learner receives it."""
    index: int
    version: int                 # weight version it was generated with
    groups: int
    rollouts: RolloutRound
    record: dict[str, Any]       # the round's part of the step record
    curriculum: Any              # curriculum state right after this round was recorded
    queued_at: float


@dataclasses.dataclass
class _Job:
    index: int
    version: int
    ids: np.ndarray
    started: float
    future: Future


class RolloutProducer:
    """Runs rounds start .. total - 1 ahead of the learner; `next_round()` hands them over in order."""

    def __init__(self, maker: RoundMaker, gate: StalenessGate, start: int, total: int):
        self.maker, self.gate, self.next_index, self.total = maker, gate, start, total
        self.rounds: queue.Queue[Round | BaseException] = queue.Queue()
        self.idle_s = 0.0
        self.generated_groups = 0
        self._pending: collections.deque[_Job] = collections.deque()
        # Rounds k .. k + S may be pending at once: each executes in its own thread.
        self._executor = ThreadPoolExecutor(gate.max_staleness + 1, thread_name_prefix="rollout-exec")
        self._thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)

    def start(self) -> "RolloutProducer":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.gate.stopped:
                due = self._due()
                if due is not None:
                    if due.future.done():
                        self._finish(self._pending.popleft())
                    else:
                        self._wait(lambda: due.future.exception(timeout=_POLL_S))
                    continue
                if self.next_index >= self.total:
                    return
                if self.gate.capacity() > 0:
                    self._generate()
                else:
                    self._wait(lambda: self.gate.wait_admitted(_POLL_S))
        except BaseException as exc:  # handed to the learner, which raises it
            self.rounds.put(exc)
        finally:
            for job in self._pending:
                job.future.cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)

    def _due(self) -> _Job | None:
        """The oldest pending round if the next sample must see it (or nothing is left to generate)."""
        if not self._pending:
            return None
        head = self._pending[0]
        return head if head.index + self.gate.max_staleness < self.next_index or self.next_index >= self.total \
            else None

    def _wait(self, wait_briefly) -> None:
        """One short wait (for an execution to finish, or for admission), counted as producer idle
        time; a failed execution is re-raised by `_finish`."""
        idle = time.perf_counter()
        try:
            wait_briefly()
        except TimeoutError:
            pass
        self.idle_s += time.perf_counter() - idle

    def _generate(self) -> None:
        j = self.next_index
        version, params = self.gate.take_weights()
        if params is not None:
            self.maker.engine.update_weights(params, weight_version=str(version))
        started = time.perf_counter()
        ids, states = self.maker.sample_round(j)
        generated = self.maker.generate_round(j, ids, states)
        self.gate.round_generated(j)
        self.generated_groups += len(ids)
        self._pending.append(_Job(j, version, ids, started, self._executor.submit(self.maker.execute_round, generated)))
        self.next_index += 1

    def _finish(self, job: _Job) -> None:
        rollouts = job.future.result()
        record = self.maker.record_round(job.index, job.ids, rollouts, time.perf_counter() - job.started)
        self.rounds.put(Round(job.index, job.version, len(job.ids), rollouts, record,
                              self.maker.curriculum_state(), time.perf_counter()))

    def next_round(self, timeout: float) -> Round | None:
        """The next finished round, or None after `timeout` s; re-raises the producer's error."""
        try:
            item = self.rounds.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise RuntimeError("the rollout producer failed") from item
        return item

    def queue_depth(self) -> int:
        return self.rounds.qsize()

    def stop(self) -> int:
        """Stop, wait for the thread, and return the groups generated but never handed over."""
        self.gate.stop()
        self._thread.join()
        left = 0
        while True:
            try:
                item = self.rounds.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Round):
                left += item.groups
        return left + sum(len(job.ids) for job in self._pending)
