"""``SumTree``: a binary sum tree over slots with two channels, a weight and a count.

Leaves hold a float weight w and a count c (1 for entries that may be drawn). Both channels
live in one complex128 array (w + 1j * c; counts are exact in float64), so each node is one
16-byte element: one random memory access per node instead of two.

``update`` writes leaves at once and remembers them; their ancestors are recomputed lazily,
once for all leaves changed since, before anything reads an internal node (a draw, a total).
The tree is read only when sampling, so the propagation of a whole training step's changes
(records and new children) is paid once, and shared ancestors are recomputed once. Internal
nodes are always recomputed as left + right from their children (never updated by adding
deltas), so the tree equals a fresh build bit for bit whatever the update history.

``sample(u, alpha, beta)`` descends all draws at once: a leaf's mass is alpha * w + beta * c, so
with alpha = (1 - eps) / sum(w) and beta = eps / sum(c) it draws exactly from
(1 - eps) w / W + eps c / n. Updates and draws cost O(m log N) in vectorized NumPy.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.depth = max(0, (self.capacity - 1).bit_length())
        self.size = 1 << self.depth  # number of leaves (power of two >= capacity)
        self._z = np.zeros(2 * self.size, dtype=np.complex128)  # node 1 is the root
        self._dirty: list[np.ndarray] = []  # leaf node indices changed since the last flush

    # ------------------------------------------------------------------ reading
    @property
    def z(self) -> np.ndarray:
        """All nodes (w + 1j * c), up to date."""
        self.flush()
        return self._z

    @property
    def w(self) -> np.ndarray:
        return self.z.real

    @property
    def c(self) -> np.ndarray:
        return self.z.imag

    @property
    def total_weight(self) -> float:
        return float(self.z[1].real)

    @property
    def total_count(self) -> int:
        return int(self.z[1].imag)

    def leaf_weights(self) -> np.ndarray:
        return self._z.real[self.size : self.size + self.capacity]

    def leaf_counts(self) -> np.ndarray:
        return self._z.imag[self.size : self.size + self.capacity]

    # ------------------------------------------------------------------ writing
    def update(self, slots: np.ndarray, w: np.ndarray, c: np.ndarray) -> None:
        """Set the leaves of distinct ``slots`` (ancestors follow lazily)."""
        slots = np.asarray(slots, dtype=np.int64)
        if slots.size == 0:
            return
        if slots.size > 1 and np.unique(slots).size != slots.size:
            raise ValueError("SumTree.update: slots must be distinct")
        w = np.broadcast_to(np.asarray(w, np.float64), slots.shape)
        c = np.broadcast_to(np.asarray(c, np.float64), slots.shape)
        idx = slots + self.size
        self._z[idx] = w + 1j * c
        self._dirty.append(idx)

    def set_leaves(self, w: np.ndarray, c: np.ndarray) -> None:
        """Replace every leaf (slot order) and rebuild all internal nodes."""
        self._z[self.size : self.size + self.capacity] = (
            np.asarray(w, np.float64) + 1j * np.asarray(c, np.float64))
        self._dirty.clear()
        self.rebuild()

    def flush(self) -> None:
        """Recompute the ancestors of every leaf changed since the last flush."""
        if not self._dirty:
            return
        idx = np.unique(np.concatenate(self._dirty))
        self._dirty.clear()
        z = self._z
        level_nodes = self.size
        while idx[0] > 1:
            idx = idx >> 1
            level_nodes >>= 1
            if level_nodes < 4 * idx.size:  # many shared ancestors from here up: drop repeats
                keep = np.empty(idx.size, dtype=bool)
                keep[0] = True
                np.not_equal(idx[1:], idx[:-1], out=keep[1:])
                idx = idx[keep]
            z[idx] = z[2 * idx] + z[2 * idx + 1]

    def rebuild(self) -> None:
        """Recompute every internal node from the leaves."""
        self._dirty.clear()
        z, lo = self._z, self.size
        while lo > 1:
            hi, lo = lo, lo >> 1
            z[lo:hi] = z[2 * lo : 2 * hi : 2] + z[2 * lo + 1 : 2 * hi : 2]

    # ------------------------------------------------------------------ drawing
    def sample(self, u: np.ndarray, alpha: float, beta: float) -> np.ndarray:
        """Leaf slot for each u in [0, 1): inverse CDF of the mass alpha * w + beta * c.

        Only leaves with positive mass are returned (rounding at a boundary goes to the side
        that has mass).
        """
        z = self.z
        u = np.array(u, dtype=np.float64)
        idx = np.ones(u.shape, dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * idx
            zl, zr = z[left], z[left + 1]
            m_left = alpha * zl.real + beta * zl.imag
            m_right = alpha * zr.real + beta * zr.imag
            right = ((u >= m_left) & (m_right > 0)) | (m_left <= 0)
            u = np.where(right, u - m_left, u)
            idx = left + right
        return idx - self.size

    def nbytes(self) -> int:
        return self._z.nbytes
