"""The learner of train.mode async: updates from the producer's rounds under bounded staleness.

Per step it waits for its device turn and the next round, checks the round's staleness
(dropping and counting any staler than S; admission makes that 0), runs the same `learn` as
the synchronous loop, publishes the new weights to the producer and logs the step with the
async metrics: staleness, queue depth, producer and learner idle time, groups dropped.

Stop and resume: on SIGTERM (or the end of the run) the learner finishes the update in hand and
checkpoints it with the curriculum exactly as it was after that round was recorded. Rounds still
in flight are dropped and counted (`groups_dropped_in_flight`); their results are in no
checkpoint, so after a resume no group is counted twice and none is lost silently.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from ace_jax.train.producer import RolloutProducer
from ace_jax.train.staleness import StalenessGate

_POLL_S = 0.05


@contextlib.contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """SIGTERM sets `stop` (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_async(trainer, total: int, log_step: Callable[[dict, int, list], None],
              stop: threading.Event | None = None) -> dict[str, Any]:
    """Run steps trainer.step .. total - 1 asynchronously; returns the async summary (also
    merged into `trainer.summary_extra`)."""
    s = trainer.cfg.train.max_staleness
    start, stop = trainer.step, stop or threading.Event()
    curriculum = trainer.curriculum_state()  # as of the last round used (none yet)
    gate = StalenessGate(s, start, total)
    producer = RolloutProducer(trainer, gate, start, total).start()
    staleness: collections.Counter[int] = collections.Counter()
    dropped_stale, idle_total, times = 0, 0.0, []
    last = time.perf_counter()
    try:
        with _stop_on_sigterm(stop):
            while trainer.step < total and not stop.is_set():
                waited = time.perf_counter()
                rnd = None
                while rnd is None and not stop.is_set():
                    if gate.wait_turn(trainer.step, _POLL_S):
                        rnd = producer.next_round(_POLL_S)
                if rnd is None:
                    break
                idle = time.perf_counter() - waited
                idle_total += idle
                gap = trainer.step - rnd.version
                record = dict(rnd.record)
                if gap > s:  # never with admission control; counted, not used
                    dropped_stale += rnd.groups
                    record.update(updated=False, update_skipped_stale=1, informative_groups=0)
                else:
                    staleness[gap] += 1
                    record = trainer.learn(rnd.rollouts, record, time.perf_counter())
                updated = record.pop("updated")
                params = jax.tree.map(jnp.copy, trainer.state.params) if updated else None
                gate.publish(trainer.step + 1, params)
                now = time.perf_counter()
                record.update(staleness=gap, weight_version=rnd.version, queue_depth=producer.queue_depth(),
                              producer_idle_s=round(producer.idle_s, 3), learner_idle_s=round(idle, 3),
                              groups_dropped_stale=dropped_stale, queue_wait_s=round(now - rnd.queued_at, 3),
                              step_s=round(now - last, 3))
                last = now
                trainer.step += 1
                curriculum = rnd.curriculum
                log_step(record, total, times)
                if trainer.step % trainer.cfg.train.checkpoint_every == 0 or trainer.step == total:
                    trainer.save(curriculum)
    finally:
        in_flight = producer.stop()
    # The live curriculum may hold rounds that were dropped: keep the one of the last round used.
    trainer.buffer, trainer.sampler = trainer.restore_curriculum(curriculum)
    if stop.is_set() and trainer.step > start and trainer.step % trainer.cfg.train.checkpoint_every:
        trainer.save(curriculum)
    summary = {"mode": "async", "max_staleness": s, "staleness_histogram": {str(k): v for k, v in sorted(staleness.items())},
               "groups_dropped_stale": dropped_stale, "groups_dropped_in_flight": in_flight,
               "groups_generated": producer.generated_groups, "producer_idle_s": round(producer.idle_s, 3),
               "learner_idle_s": round(idle_total, 3), "stopped_early": trainer.step < total}
    trainer.summary_extra.update(summary)
    return summary
