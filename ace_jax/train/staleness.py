"""Bounded staleness between one rollout producer and one learner (train.mode: async).

Versions count finished learner steps: the weights after step i are version i + 1. Round j
(the rollouts of step j) is generated with version v_j and used by update j, at version j, so
its staleness is j - v_j, the time it waited in the queue included.

* Admission (as AReaL's capacity, in rounds): round j is generated only once version >= j - S,
  so it is at most S versions old when it is used and no round is made to be thrown away.
  AReaL: capacity = min(max_concurrent - running, (S + version + 1) * batch - accepted); here
  `capacity() = min(total, version + S + 1) - generated`, rounds being whole batches.
* Device order: update i waits until round min(i + S, last) has been generated. With the
  admission rule this makes generations and updates alternate in one fixed order
  (g0 .. gS, u0, gS+1, u1, ...), so they never run on the device at once, v_j = max(start, j - S)
  whatever the timing, and every process of a multi-host run takes the same steps in the same
  order. With S = 0 the order is that of the synchronous loop.
"""

from __future__ import annotations

import threading
from typing import Any


class StalenessGate:
    """The producer's admission and the learner's turn, plus the weights handed between them."""

    def __init__(self, max_staleness: int, start: int, total: int):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if not 0 <= start <= total:
            raise ValueError(f"start step {start} must be in 0..total ({total})")
        self.max_staleness, self.total = max_staleness, total
        self.version = start        # finished updates (the learner's step)
        self.generated = start      # rounds start .. generated - 1 have been generated
        self.stopped = False
        self._weights: tuple[int, Any] | None = None  # (version, params) not yet taken by the producer
        self._cond = threading.Condition()

    # ------------------------------------------------------------------ producer side
    def capacity(self) -> int:
        """Rounds that may be generated now without any of them ending up staler than S."""
        with self._cond:
            return max(0, min(self.total, self.version + self.max_staleness + 1) - self.generated)

    def wait_admitted(self, timeout: float) -> bool:
        """Wait up to `timeout` s for room to generate the next round; False if none (or stopped)."""
        with self._cond:
            self._cond.wait_for(lambda: self.stopped or self.capacity() > 0, timeout)
            return not self.stopped and self.capacity() > 0

    def take_weights(self) -> tuple[int, Any]:
        """(version, params or None): the newest weights published since the last call."""
        with self._cond:
            weights, self._weights = self._weights, None
            return (self.version, None) if weights is None else weights

    def round_generated(self, index: int) -> None:
        with self._cond:
            if index != self.generated:
                raise RuntimeError(f"round {index} generated out of order (expected {self.generated})")
            self.generated += 1
            self._cond.notify_all()

    # ------------------------------------------------------------------ learner side
    def wait_turn(self, step: int, timeout: float) -> bool:
        """Wait up to `timeout` s until update `step` may run (its device turn); False if not yet."""
        need = min(step + self.max_staleness + 1, self.total)
        with self._cond:
            self._cond.wait_for(lambda: self.stopped or self.generated >= need, timeout)
            return self.generated >= need

    def publish(self, version: int, params: Any | None) -> None:
        """The learner finished update `version - 1`: new weights (None if they did not change)."""
        with self._cond:
            if version != self.version + 1:
                raise RuntimeError(f"version {version} published after {self.version}")
            self.version = version
            if params is not None:
                self._weights = (version, params)
            elif self._weights is not None:
                self._weights = (version, self._weights[1])
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._cond.notify_all()
