"""``HashIndex``: content hash -> slot, an open-addressing table in NumPy (for dedupe).

Linear probing over a power-of-two table of int32 slot numbers (-1 empty, -2 deleted) with at
least 4 positions per key (live keys fill at most a quarter, deleted marks at most an eighth
before a rebuild), so probe runs stay short. Lookups, inserts and deletes are vectorized over a
batch of keys, probing all of them one position per round. The keys themselves live in the
buffer's ``content_hash`` array, so the table costs 4 bytes per position (16 per buffer slot).
"""

from __future__ import annotations

import numpy as np

_EMPTY, _DELETED = -1, -2
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing spreads non-random keys too


class HashIndex:
    def __init__(self, capacity: int, keys: np.ndarray) -> None:
        """``keys[slot]`` is the key of a slot (the buffer's array, read when probing)."""
        self.bits = max(4, int(4 * max(1, capacity) - 1).bit_length())
        self.mask = (1 << self.bits) - 1
        self.table = np.full(1 << self.bits, _EMPTY, dtype=np.int32)
        self.keys = keys
        self.n_deleted = 0

    def _home(self, keys: np.ndarray) -> np.ndarray:
        h = np.asarray(keys, dtype=np.uint64) * _MIX
        return (h >> np.uint64(64 - self.bits)).astype(np.int64)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Slot holding each key, or -1."""
        keys = np.asarray(keys, dtype=np.uint64)
        out = np.full(keys.shape, -1, dtype=np.int64)
        pos = self._home(keys)
        active = np.arange(keys.size)
        while active.size:
            t = self.table[pos]
            hit = (t >= 0) & (self.keys[np.maximum(t, 0)] == keys[active])
            out[active[hit]] = t[hit]
            go_on = ~hit & (t != _EMPTY)
            active, pos = active[go_on], (pos[go_on] + 1) & self.mask
        return out

    def insert(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Add distinct keys that are not in the table yet (with distinct slots)."""
        keys = np.asarray(keys, dtype=np.uint64)
        slots = np.asarray(slots, dtype=np.int32)
        pos = self._home(keys)
        active = np.arange(keys.size)
        while active.size:
            t = self.table[pos]
            free = t < 0
            # several keys may probe the same free position: write them all, and whichever
            # slot number stuck has taken it (slots are distinct); the others probe on
            fp = pos[free]
            self.table[fp] = slots[active[free]]
            won = np.zeros(active.size, dtype=bool)
            won[free] = self.table[fp] == slots[active[free]]
            self.n_deleted -= int(np.count_nonzero(t[won] == _DELETED))
            lost = ~won
            active, pos = active[lost], (pos[lost] + 1) & self.mask

    def delete(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Remove the entries (key, slot); each must be in the table."""
        keys = np.asarray(keys, dtype=np.uint64)
        slots = np.asarray(slots, dtype=np.int32)
        pos = self._home(keys)
        active = np.arange(keys.size)
        probes = 0
        while active.size:
            if probes > self.table.size:
                raise KeyError("HashIndex.delete: some (key, slot) pairs are not in the table")
            hit = self.table[pos] == slots[active]
            self.table[pos[hit]] = _DELETED
            active, pos = active[~hit], (pos[~hit] + 1) & self.mask
            probes += 1
        self.n_deleted += int(keys.size)
        if self.n_deleted > self.table.size // 8:
            self.rebuild()

    def rebuild(self) -> None:
        """Drop tombstones: reinsert every live entry."""
        live = np.flatnonzero(self.table >= 0)
        slots = self.table[live].copy()
        self.table[:] = _EMPTY
        self.n_deleted = 0
        self.insert(self.keys[slots], slots)

    def nbytes(self) -> int:
        return self.table.nbytes
