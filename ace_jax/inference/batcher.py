"""Batches concurrent generate calls: requests arriving within a few ms run as one engine call.

Generation can be paused and continued (SGLang's /pause_generation and /continue_generation).
The engine runs a whole batch as one compiled call, so its only step boundary is the end of a
call: `pause` waits for the running call (whose answers go out), then no new call starts until
`resume`. Calls queued or arriving meanwhile wait in the queue; in mode "abort" the queued ones
are answered at once as aborted (no tokens, finish reason "abort"), as SGLang aborts the
requests it is processing. "retract" and "in_place" both keep them queued: they run after
`resume`, with whatever weights are loaded by then. A continuous engine (`engine.scheduler`)
gets each batch without waiting for the previous one, so concurrent clients share its decode
slots; `pause` and `exclusive()` then wait for every batch handed to it.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from concurrent.futures import Future
from typing import Iterator, Sequence

from rollout.engine import PAUSE_MODES, Completion, GenerateRequest


class Batcher:
    """One worker thread owns the engine. `submit` blocks until its completions are ready.

    The first queued call opens a batch; calls arriving within `max_wait_s` (up to `max_rows`
    samples) join it. `exclusive()` waits for the running batch and holds the engine idle (weight
    updates). If a batch fails, its calls are retried one by one so one bad call fails alone.
    """

    def __init__(self, engine, max_wait_s: float = 0.005, max_rows: int = 32):
        self.engine = engine
        self.max_wait_s = max_wait_s
        self.max_rows = max_rows
        self.batches = 0
        self.calls = 0
        self.aborted = 0
        self._pending = 0
        self._jobs: collections.deque[tuple[list[GenerateRequest], Future]] = collections.deque()
        self._cond = threading.Condition()
        self._paused = self._running = self._closed = False
        self._in_flight = 0  # batches handed to the engine, not yet answered
        self._engine_lock = threading.RLock()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Calls submitted and not yet answered (queued or running)."""
        return self._pending

    @property
    def paused(self) -> bool:
        return self._paused

    def submit(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        future: Future = Future()
        with self._cond:
            self._pending += 1
            self._jobs.append((list(requests), future))
            self._cond.notify_all()
        try:
            return future.result()
        finally:
            with self._cond:
                self._pending -= 1

    def pause(self, mode: str = "abort") -> int:
        """Stop starting engine calls once the running one has finished; returns the calls
        aborted (mode "abort": every queued call, answered as aborted; else 0)."""
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode {mode!r}; allowed: {list(PAUSE_MODES)}")
        with self._cond:
            self._paused = True
            self._cond.wait_for(lambda: not self._running and self._in_flight == 0)
            aborted = list(self._jobs) if mode == "abort" else []
            if aborted:
                self._jobs.clear()
        for requests, future in aborted:
            future.set_result([[_aborted(r, self.engine.weight_version) for _ in range(r.n)] for r in requests])
        self.aborted += len(aborted)
        return len(aborted)

    def resume(self) -> None:
        """Start engine calls again (the queued ones first)."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._engine_lock:
            with self._cond:
                self._cond.wait_for(lambda: self._in_flight == 0)
            yield

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def _rows(self) -> int:
        return sum(r.n for requests, _ in self._jobs for r in requests)

    def _next_batch(self) -> list | None:
        """Wait for a batch that may run (None when closed) and mark it running."""
        with self._cond:
            while True:
                self._cond.wait_for(lambda: self._closed or (self._jobs and not self._paused))
                if self._closed:
                    return None
                deadline = time.monotonic() + self.max_wait_s
                while not (self._closed or self._paused) and self._rows() < self.max_rows:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed or self._paused or not self._jobs:
                    continue
                jobs, rows = [], 0
                while self._jobs and rows < self.max_rows:
                    jobs.append(self._jobs.popleft())
                    rows += sum(r.n for r in jobs[-1][0])
                self._running = True
                return jobs

    def _loop(self) -> None:
        while (jobs := self._next_batch()) is not None:
            try:
                self._run(jobs)
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()

    def _run(self, jobs: list) -> None:
        """Start the batch and answer its calls when it is done. A continuous engine returns at
        once (later batches join its running decode)."""
        with self._engine_lock:
            try:
                future = self._start([r for requests, _ in jobs for r in requests])
            except BaseException as exc:  # noqa: BLE001 - a bad request fails alone
                if len(jobs) > 1:
                    for job in jobs:
                        self._run([job])
                else:
                    jobs[0][1].set_exception(exc)
                return
            self.batches += 1
            self.calls += len(jobs)
            with self._cond:
                self._in_flight += 1
        future.add_done_callback(lambda f: self._answer(jobs, f))

    def _start(self, requests: list[GenerateRequest]) -> Future:
        if getattr(self.engine, "scheduler", None) is not None:
            return self.engine.generate_async(requests)
        future: Future = Future()
        future.set_result(self.engine.generate(requests))
        return future

    def _answer(self, jobs: list, future: Future) -> None:
        try:
            results = future.result()
        except BaseException as exc:  # noqa: BLE001 - handed to the callers
            for _, job_future in jobs:
                job_future.set_exception(exc)
        else:
            start = 0
            for requests, job_future in jobs:
                job_future.set_result(results[start:start + len(requests)])
                start += len(requests)
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()


def _aborted(request: GenerateRequest, weight_version: str | None) -> Completion:
    """An aborted sample: no tokens (SGLang returns what it had generated; a queued call has none)."""
    return Completion(token_ids=[], logprobs=[] if request.return_logprob else None, finish_reason="abort",
                      prompt_tokens=len(request.input_ids), weight_version=weight_version)
