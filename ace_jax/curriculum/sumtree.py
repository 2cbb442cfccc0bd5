"""``SumTree``: a binary sum tree over slots with two channels, a weight and a count.

Leaves hold a float weight w and a count c (1 for entries that may be drawn). Both channels
live in one complex128 array (w + 1j * c; counts are exact in float64), so each node is one
16-byte element: one random memory access per node instead of two. Internal nodes are always
recomputed as left + right from their children (never updated by adding deltas), so the tree
equals a fresh build bit for bit whatever the update history.

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
        self.z = np.zeros(2 * self.size, dtype=np.complex128)  # node 1 is the root
        self.w = self.z.real  # views
        self.c = self.z.imag

    @property
    def total_weight(self) -> float:
        return float(self.z[1].real)

    @property
    def total_count(self) -> int:
        return int(self.z[1].imag)

    def leaf_weights(self) -> np.ndarray:
        return self.w[self.size : self.size + self.capacity]

    def leaf_counts(self) -> np.ndarray:
        return self.c[self.size : self.size + self.capacity]

    def update(self, slots: np.ndarray, w: np.ndarray, c: np.ndarray) -> None:
        """Set the leaves of distinct ``slots`` and recompute their ancestors."""
        slots = np.asarray(slots, dtype=np.int64)
        if slots.size == 0:
            return
        order = np.argsort(slots, kind="stable")
        idx = slots[order] + self.size
        if idx.size > 1 and np.any(idx[1:] == idx[:-1]):
            raise ValueError("SumTree.update: slots must be distinct")
        w = np.broadcast_to(np.asarray(w, np.float64), slots.shape)[order]
        c = np.broadcast_to(np.asarray(c, np.float64), slots.shape)[order]
        self.z[idx] = w + 1j * c
        level_nodes = self.size
        while idx[0] > 1:
            idx = idx >> 1
            level_nodes >>= 1
            if level_nodes < 4 * idx.size:  # many shared ancestors from here up: drop repeats
                keep = np.empty(idx.size, dtype=bool)
                keep[0] = True
                np.not_equal(idx[1:], idx[:-1], out=keep[1:])
                idx = idx[keep]
            self.z[idx] = self.z[2 * idx] + self.z[2 * idx + 1]

    def rebuild(self) -> None:
        """Recompute every internal node from the leaves."""
        lo = self.size
        while lo > 1:
            hi, lo = lo, lo >> 1
            self.z[lo:hi] = self.z[2 * lo : 2 * hi : 2] + self.z[2 * lo + 1 : 2 * hi : 2]

    def clear(self) -> None:
        self.z[:] = 0.0

    def sample(self, u: np.ndarray, alpha: float, beta: float) -> np.ndarray:
        """Leaf slot for each u in [0, 1): inverse CDF of the mass alpha * w + beta * c.

        Only leaves with positive mass are returned (rounding at a boundary goes to the side
        that has mass).
        """
        u = np.array(u, dtype=np.float64)
        idx = np.ones(u.shape, dtype=np.int64)
        for _ in range(self.depth):
            left = 2 * idx
            zl, zr = self.z[left], self.z[left + 1]
            m_left = alpha * zl.real + beta * zl.imag
            m_right = alpha * zr.real + beta * zr.imag
            right = ((u >= m_left) & (m_right > 0)) | (m_left <= 0)
            u = np.where(right, u - m_left, u)
            idx = left + right
        return idx - self.size

    def nbytes(self) -> int:
        return self.z.nbytes
