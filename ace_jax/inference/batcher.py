"""Batches concurrent generate calls: requests arriving within a few ms run as one engine call."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from typing import Iterator, Sequence

from rollout.engine import Completion, GenerateRequest


class Batcher:
    """One worker thread owns the engine. `submit` blocks until its completions are ready.

    The first queued call opens a batch; calls arriving within `max_wait_s` (up to `max_rows`
    samples) join it. `exclusive()` waits for the running batch and holds the engine idle (weight
    updates). If a batch fails, its calls are retried one by one so one bad call fails alone.
    A continuous engine (`engine.scheduler`) gets each batch without waiting for the previous
    one, so concurrent clients share its decode slots.
    """

    def __init__(self, engine, max_wait_s: float = 0.005, max_rows: int = 32):
        self.engine = engine
        self.max_wait_s = max_wait_s
        self.max_rows = max_rows
        self.batches = 0
        self.calls = 0
        self._pending = 0
        self._count_lock = threading.Lock()
        self._engine_lock = threading.RLock()
        self._idle = threading.Condition()
        self._in_flight = 0  # batches handed to a continuous engine, not yet answered
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Calls submitted and not yet answered (queued or running)."""
        return self._pending

    def submit(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        future: Future = Future()
        with self._count_lock:
            self._pending += 1
        try:
            self._queue.put((list(requests), future))
            return future.result()
        finally:
            with self._count_lock:
                self._pending -= 1

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._engine_lock:
            with self._idle:
                self._idle.wait_for(lambda: self._in_flight == 0)
            yield

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            rows = sum(r.n for r in job[0])
            deadline = time.monotonic() + self.max_wait_s
            while rows < self.max_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                jobs.append(nxt)
                rows += sum(r.n for r in nxt[0])
            self._run(jobs)

    def _run(self, jobs: list) -> None:
        """Start the batch and answer its calls when it is done. A continuous engine returns at
        once (later batches join its running decode); `exclusive()` waits for every started batch."""
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
            with self._idle:
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
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()
