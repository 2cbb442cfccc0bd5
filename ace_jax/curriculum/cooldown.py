"""``ExpiryQueue``: entry ids bucketed by the step at which their cool-down ends.

Pushing and popping touch only the entries that enter or leave a cool-down; the buffer checks
popped ids against its arrays (an entry may have been evicted or re-cooled since).
"""

from __future__ import annotations

import heapq

import numpy as np


class ExpiryQueue:
    def __init__(self) -> None:
        self._buckets: dict[int, list[np.ndarray]] = {}
        self._steps: list[int] = []  # heap of bucket keys

    def push(self, until: np.ndarray, ids: np.ndarray) -> None:
        """Entries ``ids`` cool down through step ``until`` (inclusive)."""
        until = np.asarray(until, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        for u in np.unique(until):
            u = int(u)
            if u not in self._buckets:
                self._buckets[u] = []
                heapq.heappush(self._steps, u)
            self._buckets[u].append(ids[until == u])

    def pop_due(self, step: int) -> np.ndarray:
        """Ids whose cool-down ended before ``step`` (until < step)."""
        out = []
        while self._steps and self._steps[0] < step:
            out.extend(self._buckets.pop(heapq.heappop(self._steps)))
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def clear(self) -> None:
        self._buckets.clear()
        self._steps.clear()

    def __len__(self) -> int:
        return sum(a.size for b in self._buckets.values() for a in b)
