"""Synthetic buffers for tests, benchmarks and simulations (no environment needed)."""

from __future__ import annotations

import numpy as np

from .buffer import EvolvingBuffer


def fill_synthetic(buffer: EvolvingBuffer, n_entries: int, rng: np.random.Generator,
                   n_tasks: int = 16, group_size: int = 8, step: int = 0,
                   batch: int = 65536) -> np.ndarray:
    """Grow ``buffer`` to ``n_entries`` entries; returns the live ids.

    Roots for ``n_tasks`` tasks, then children breadth first (random q, random 64-bit hashes,
    operators by q), and one random group of ``group_size`` outcomes recorded per entry, so
    that counts, EMAs and LP differ between entries. Progress is silent; a million entries take
    a few seconds.
    """
    if n_entries > buffer.capacity:
        raise ValueError(f"n_entries={n_entries} exceeds capacity={buffer.capacity}")
    new_tasks = np.arange(n_tasks) + (int(buffer.task_id.max()) + 1 if buffer.size else 0)
    frontier = buffer.add_roots(new_tasks[: max(0, min(n_tasks, n_entries - buffer.size))])
    cfg = buffer.config
    while buffer.size < n_entries and frontier.size:
        parents = np.repeat(frontier, cfg.max_children)
        parents = parents[: n_entries - buffer.size]
        kids = []
        for lo in range(0, parents.size, batch):
            p = parents[lo : lo + batch]
            q = rng.random(p.size)
            op = np.where(q > 0.3, 2, 1)
            hashes = rng.integers(0, 2**63, p.size, dtype=np.uint64)
            ids = buffer.add_children(p, q, op, hashes=hashes)
            kids.append(ids[ids >= 0])
        frontier = np.concatenate(kids) if kids else np.empty(0, np.int64)
    ids = buffer.entry_id[buffer.live_slots()]
    p = rng.beta(0.5, 0.5, ids.size)[:, None]
    succ = rng.random((ids.size, group_size)) < p
    rewards = np.where(succ, 0.3 + 0.7 * rng.random(succ.shape), 0.0)
    for lo in range(0, ids.size, batch):
        buffer.record(ids[lo : lo + batch], rewards[lo : lo + batch], succ[lo : lo + batch], step)
    return ids
