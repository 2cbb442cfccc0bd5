"""``LearnabilitySampler``: the batch rule of acegrpo.md ("Learnability Potential and sampling").

A batch of k states:
1. k_root = min(Binomial(k, root_mix), number of roots) roots, uniformly without replacement.
   There is one root per task, so this is stratified by task: no task twice in a batch.
2. The other k - k_root from the eligible entries E (non-root, not cooling), n = |E|, with
       P(s) = (1 - eps) * softmax(LP / tau)(s) + eps / n,
   without replacement: draw t picks s among the entries of E not chosen yet with probability
   P(s) / (1 - sum of P over the chosen), i.e. P with the chosen entries' mass zeroed and
   renormalized (successive sampling).
3. If E has fewer than k - k_root entries, all of E is taken and the rest of the batch is
   filled with further roots (still without replacement); the batch is shorter than k only when
   the buffer holds fewer than k sampleable entries.

How step 2 is exact and fast: the buffer keeps a sum tree with leaf weight
w(s) = exp((LP(s) - bound) / tau) and count 1 for s in E (``bound`` is the potential's fixed
upper bound, a stable reference that cancels in the softmax). Descending it with leaf mass
alpha * w + beta * c, alpha = (1 - eps) / sum(w), beta = eps / n, draws i.i.d. from P in
O(log N). The batch is the first k - k_root distinct entries of that i.i.d. stream (draws of an
entry already chosen are skipped); the sequence of first occurrences of an i.i.d. stream has
exactly the successive-sampling law above. Small pools (n <= max(dense_below, 4 * need)), a
stream that keeps hitting chosen entries, or weights that all underflow use the dense
equivalent: Gumbel-top-k over P (the same law, Plackett-Luce).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .buffer import EvolvingBuffer

_MAX_ROUNDS = 32


class LearnabilitySampler:
    """Draws batches from an ``EvolvingBuffer``; owns a seeded numpy Generator."""

    def __init__(self, seed: int | None = 0, dense_below: int = 4096) -> None:
        self.rng = np.random.default_rng(seed)
        self.dense_below = int(dense_below)

    # ------------------------------------------------------------------ distribution
    def probabilities(self, buffer: EvolvingBuffer) -> tuple[np.ndarray, np.ndarray]:
        """(ids, P) of the eligible non-root entries for a single draw (P sums to 1)."""
        slots = np.flatnonzero(buffer.tree.leaf_counts() > 0)
        return buffer.entry_id[slots].copy(), self._dense_p(buffer, slots)

    def _dense_p(self, buffer: EvolvingBuffer, slots: np.ndarray) -> np.ndarray:
        eps, n = buffer.config.eps, slots.size
        if n == 0:
            return np.zeros(0)
        alpha, beta = self._mix(buffer)
        if alpha is not None:
            return alpha * buffer.tree.leaf_weights()[slots] + beta
        # every weight underflowed (tiny tau): softmax with max-subtraction instead
        z = buffer.lp[slots] / buffer.config.tau
        e = np.exp(z - z.max())
        return (1.0 - eps) * e / e.sum() + eps / n

    @staticmethod
    def _mix(buffer: EvolvingBuffer) -> tuple[float | None, float]:
        w, n = buffer.tree.total_weight, buffer.tree.total_count
        eps = buffer.config.eps
        if not (w > 0 and np.isfinite(w)):
            return None, eps / max(n, 1)
        return (1.0 - eps) / w, eps / n

    # ------------------------------------------------------------------ sampling
    def sample(self, buffer: EvolvingBuffer, k: int, rng: np.random.Generator | None = None,
               step: int | None = None) -> np.ndarray:
        """Ids of a batch of at most k distinct states (roots first); see the module doc.

        ``step`` moves the buffer's clock first (ends due cool-downs); ``rng`` defaults to the
        sampler's own Generator.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        rng = self.rng if rng is None else rng
        if step is not None:
            buffer.advance(step)
        roots = buffer.root_ids
        k_root = min(int(rng.binomial(k, buffer.config.root_mix)), roots.size)
        need = min(k - k_root, buffer.n_eligible)
        extra = min(k - k_root - need, roots.size - k_root)
        root_pick = rng.choice(roots.size, size=k_root + extra, replace=False)
        slots = self._draw_eligible(buffer, need, rng)
        return np.concatenate([roots[root_pick], buffer.entry_id[slots]]).astype(np.int64)

    def _draw_eligible(self, buffer: EvolvingBuffer, need: int,
                       rng: np.random.Generator) -> np.ndarray:
        if need <= 0:
            return np.empty(0, dtype=np.int64)
        n = buffer.n_eligible
        alpha, beta = self._mix(buffer)
        if alpha is None or n <= max(self.dense_below, 4 * need):
            return self._gumbel_top(buffer, need, rng, np.empty(0, dtype=np.int64))
        chosen = np.empty(0, dtype=np.int64)
        for _ in range(_MAX_ROUNDS):
            r = need - chosen.size
            draws = buffer.tree.sample(rng.random(r + r // 2 + 8), alpha, beta)
            uniq, first = np.unique(draws, return_index=True)
            fresh = ~np.isin(uniq, chosen)
            new = draws[np.sort(first[fresh])][:r]  # first occurrences, in stream order
            chosen = np.concatenate([chosen, new])
            if chosen.size == need:
                return chosen
        return np.concatenate([chosen, self._gumbel_top(buffer, need - chosen.size, rng, chosen)])

    def _gumbel_top(self, buffer: EvolvingBuffer, r: int, rng: np.random.Generator,
                    exclude: np.ndarray) -> np.ndarray:
        """r entries by successive sampling from P over E minus ``exclude`` (Gumbel-top-r)."""
        slots = np.flatnonzero(buffer.tree.leaf_counts() > 0)
        p = self._dense_p(buffer, slots)
        if exclude.size:
            keep = ~np.isin(slots, exclude)
            slots, p = slots[keep], p[keep]
        with np.errstate(divide="ignore"):
            keys = np.log(p) + rng.gumbel(size=slots.size)
        top = np.argpartition(-keys, r - 1)[:r] if r < slots.size else np.arange(slots.size)
        return slots[top[np.argsort(-keys[top], kind="stable")]]

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "dense_below": self.dense_below}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        bit_generator = getattr(np.random, state["rng"]["bit_generator"])()
        bit_generator.state = state["rng"]
        self.rng = np.random.Generator(bit_generator)
        self.dense_below = int(state["dense_below"])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "LearnabilitySampler":
        s = cls(seed=None)
        s.load_state_dict(state)
        return s
