"""``EvolvingBuffer``: the Evolving Data Buffer (acegrpo.md, "Evolving Data Buffer").

Structure of arrays with a fixed capacity; slots are reused. An entry is named by an id that
is never reused: ``id = serial << slot_bits | slot`` (serial counts insertions), so a stale id
(its entry evicted, the slot reused) is recognized and ignored, and a smaller id is older.

Besides the per-entry arrays the buffer keeps, updated only where entries change:
- a ``SumTree`` over eligible (non-root, not cooling) entries: weight exp((LP - bound) / tau)
  and count 1, for the sampler;
- a ``HashIndex`` content hash -> slot for dedupe of children;
- an ``ExpiryQueue`` of cool-downs;
- ``priority`` for eviction: LP for eligible entries, -1 while cooling (a cooling entry's
  sampling weight is zero), +inf for roots (protected) and free slots.
"""

from __future__ import annotations

import hashlib
from operator import itemgetter
from typing import Any, Mapping, Sequence

import numpy as np

from .config import CurriculumConfig
from .cooldown import ExpiryQueue
from .evict import lowest
from .hashindex import HashIndex
from .payload import Payload, PayloadStore
from .potentials import LPInputs, get_potential
from .sumtree import SumTree

OPERATORS = ("draft", "debug", "improve")

# name -> (dtype, value of a free slot)
FIELDS: dict[str, tuple[Any, Any]] = {
    "entry_id": (np.int64, -1),
    "task_id": (np.int32, -1),
    "parent_id": (np.int64, -1),
    "depth": (np.int16, 0),
    "operator": (np.int8, 0),
    "q": (np.float32, 0.0),
    "content_hash": (np.uint64, 0),
    "payload_id": (np.int64, -1),
    "a": (np.float64, 0.0),
    "b": (np.float64, 0.0),
    "ema_mean": (np.float32, 0.0),
    "ema_std": (np.float32, 0.0),
    "visits": (np.int32, 0),
    "last_visit": (np.int64, -1),
    "cool_until": (np.int64, -1),  # last step of the current cool-down; -1: not cooling
    "cool_level": (np.int8, 0),
    "flat_streak": (np.int8, 0),  # zero-variance groups in a row
    "n_children": (np.int16, 0),  # live children
    "protected": (np.bool_, False),
    "lp": (np.float64, 0.0),
    "priority": (np.float64, np.inf),
}
REJECT_REASONS = ("orphan", "too_deep", "duplicate", "child_limit", "no_room")
_COUNTERS = ("n_added", "n_evicted", "n_recorded", "n_stale") + tuple(
    f"n_{r}" for r in REJECT_REASONS
)


def content_hash(task_id: int, code: str) -> np.uint64:
    """64-bit hash of a state's content (task and solution code) for dedupe."""
    h = hashlib.blake2b(f"{int(task_id)}\x00{code}".encode(), digest_size=8).digest()
    return np.frombuffer(h, dtype=np.uint64)[0]


class EvolvingBuffer:
    """Fixed-capacity buffer of states; see the module docstring."""

    def __init__(self, config: CurriculumConfig | None = None,
                 store: PayloadStore | None = None) -> None:
        self.config = config or CurriculumConfig()
        self.store = store if store is not None else PayloadStore()
        cap = self.config.capacity
        self.capacity = cap
        self.slot_bits = max(1, (cap - 1).bit_length())
        for name, (dtype, fill) in FIELDS.items():
            setattr(self, name, np.full(cap, fill, dtype=dtype))
        self._free = np.arange(cap - 1, -1, -1, dtype=np.int64)  # stack; pops give 0, 1, ...
        self._n_free = cap
        self._roots = np.empty(0, dtype=np.int64)  # root ids in insertion order
        self.serial = 0
        self.step = 0
        self.counters = {k: 0 for k in _COUNTERS}
        self.tree = SumTree(cap)
        self.index = HashIndex(cap, self.content_hash)
        self.cooling = ExpiryQueue()
        self._set_potential()

    def _set_potential(self) -> None:
        self.potential = get_potential(self.config.potential)
        self._lp_ref = float(self.potential.bound(self.config))

    # ------------------------------------------------------------------ lookups
    @property
    def size(self) -> int:
        return self.capacity - self._n_free

    @property
    def root_ids(self) -> np.ndarray:
        return self._roots.copy()

    @property
    def n_eligible(self) -> int:
        """Non-root entries that may be sampled now (not cooling)."""
        return self.tree.total_count

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, or -1 where the id is unknown or its entry was evicted."""
        ids = np.asarray(ids, dtype=np.int64)
        slots = ids & ((1 << self.slot_bits) - 1)
        slots[slots >= self.capacity] = 0  # corrupt ids: fail the check below
        return np.where((self.entry_id[slots] == ids) & (ids >= 0), slots, -1)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.slots_of(ids) >= 0

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.entry_id >= 0)

    def fields(self, ids: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Copies of the named fields (all by default) for live ids; raises on stale ids."""
        slots = self.slots_of(ids)
        if np.any(slots < 0):
            bad = np.asarray(ids)[slots < 0]
            raise KeyError(f"ids not in the buffer (evicted or unknown): {bad[:8].tolist()}")
        return {n: getattr(self, n)[slots].copy() for n in (names or FIELDS)}

    def payload(self, entry_id: int) -> dict[str, str] | None:
        pid = int(self.fields([entry_id], ["payload_id"])["payload_id"][0])
        return None if pid < 0 else self.store.get(pid)

    def lp_inputs(self, slots: np.ndarray) -> LPInputs:
        return LPInputs(self.a[slots], self.b[slots], self.q[slots], self.visits[slots],
                        self.ema_std[slots])

    # ------------------------------------------------------------------ derived state
    def _refresh(self, slots: np.ndarray) -> None:
        """Recompute LP, tree leaves and eviction priority of distinct live ``slots``."""
        if slots.size == 0:
            return
        cfg = self.config
        lp = self.potential(self.lp_inputs(slots), cfg)
        self.lp[slots] = lp
        cooling = self.cool_until[slots] >= 0
        prot = self.protected[slots]
        eligible = ~cooling & ~prot
        w = np.where(eligible, np.exp((lp - self._lp_ref) / cfg.tau), 0.0)
        self.tree.update(slots, w, eligible.astype(np.int32))
        self.priority[slots] = np.where(prot, np.inf, np.where(cooling, -1.0, lp))

    def _release(self, slots: np.ndarray) -> None:
        """Evict: unlink entries; the caller rewrites their slots at once (``_write_new``)."""
        if slots.size == 0:
            return
        self.index.delete(self.content_hash[slots], slots)
        parents = self.slots_of(self.parent_id[slots])
        _add_counts(self.n_children, parents[parents >= 0], -1)
        pids = self.payload_id[slots]
        self.store.discard(pids[pids >= 0])
        self.entry_id[slots] = -1  # stale ids (children's parent links) stop resolving
        self.counters["n_evicted"] += int(slots.size)

    def _write_new(self, slots: np.ndarray, values: Mapping[str, Any]) -> np.ndarray:
        """Fill every field of fresh entries (``values`` or the free-slot value); returns ids."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise KeyError(f"unknown buffer field(s) {sorted(unknown)}")
        ids = ((self.serial + np.arange(slots.size, dtype=np.int64)) << self.slot_bits) | slots
        self.serial += int(slots.size)
        for name, (_, fill) in FIELDS.items():
            getattr(self, name)[slots] = values.get(name, fill)
        self.entry_id[slots] = ids
        self.counters["n_added"] += int(slots.size)
        self._refresh(slots)
        return ids

    def _allocate(self, m: int) -> np.ndarray:
        """``m`` slots: free ones first, then evictions (lowest priority, ties oldest)."""
        take = min(m, self._n_free)
        slots = self._free[self._n_free - take : self._n_free][::-1].copy()
        self._n_free -= take
        if m > take:
            victims = lowest(self.priority, self.entry_id, m - take)
            if victims.size < m - take:
                raise RuntimeError("EvolvingBuffer: not enough unprotected entries to evict")
            self._release(victims)
            slots = np.concatenate([slots, victims])
        return slots

    def _room(self) -> int:
        """Slots available to new entries: free plus unprotected."""
        return self._n_free + (self.size - self._roots.size)

    # ------------------------------------------------------------------ adding
    def add_roots(self, task_ids: Sequence[int],
                  payloads: Sequence[Payload] | None = None) -> np.ndarray:
        """One protected root (no solution, operator draft, q = 0) per new task; returns ids."""
        cfg = self.config
        task_ids = np.asarray(task_ids, dtype=np.int64).reshape(-1)
        if np.unique(task_ids).size != task_ids.size:
            raise ValueError("add_roots: task_ids must be distinct (one root per task)")
        known = np.isin(task_ids, self.task_id[self.slots_of(self._roots)])
        if known.any():
            raise ValueError(f"add_roots: tasks already have a root: {task_ids[known].tolist()}")
        if payloads is not None and len(payloads) != task_ids.size:
            raise ValueError(f"add_roots: {len(payloads)} payloads for {task_ids.size} tasks")
        if task_ids.size > self._room():
            raise ValueError(f"add_roots: {task_ids.size} roots do not fit; room for "
                             f"{self._room()} (capacity={cfg.capacity})")
        slots = self._allocate(task_ids.size)
        values = {"task_id": task_ids, "operator": OPERATORS.index("draft"),
                  "a": cfg.prior_a, "b": cfg.prior_b, "protected": True}
        if payloads is not None:
            values["payload_id"] = self.store.put_many(payloads)
        ids = self._write_new(slots, values)
        self._roots = np.concatenate([self._roots, ids])
        return ids

    def add_children(
        self,
        parent_ids: Sequence[int],
        q: Sequence[float],
        operator: Sequence[int | str],
        hashes: Sequence[int] | None = None,
        payloads: Sequence[Payload] | None = None,
        step: int | None = None,
    ) -> np.ndarray:
        """Turn executed rollouts into child states; returns their ids (-1 where rejected).

        A rollout is dropped when its parent is gone (``orphan``), the child would be deeper
        than ``max_depth``, its content hash is already in the buffer or earlier in the batch
        (``duplicate``; best q kept), its parent already has ``max_children`` live children
        (best q first), or no unprotected entry is left to evict (``no_room``; best q kept).
        ``hashes`` default to ``content_hash(task, payload["code"])``. The rejected count per
        reason is in ``last_add_rejects``. New children do not compete for eviction with each
        other: the lowest-priority existing entries make room for the whole batch.
        """
        cfg = self.config
        if step is not None:
            self.advance(step)
        parent_ids = np.asarray(parent_ids, dtype=np.int64).reshape(-1)
        m = parent_ids.size
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        op = _operator_codes(operator, m)
        if q.size != m or not np.all((q >= 0) & (q <= 1)):
            raise ValueError(f"add_children: q must be {m} values in [0, 1]")
        if payloads is not None and len(payloads) != m:
            raise ValueError(f"add_children: {len(payloads)} payloads for {m} rollouts")
        pslots = self.slots_of(parent_ids)
        reason = np.zeros(m, dtype=np.int8)  # 0 accepted, else 1 + REJECT_REASONS index
        reason[pslots < 0] = 1
        ps = np.maximum(pslots, 0)
        if hashes is None:
            if payloads is None:
                raise ValueError("add_children: give hashes or payloads with a 'code' field")
            hashes = [content_hash(t, p.get("code", ""))
                      for t, p in zip(self.task_id[ps], payloads)]
        hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1)
        if hashes.size != m:
            raise ValueError(f"add_children: {hashes.size} hashes for {m} rollouts")
        depth = self.depth[ps].astype(np.int64) + 1
        reason[(reason == 0) & (depth > cfg.max_depth)] = 2
        rows = np.flatnonzero(reason == 0)
        seen = self.index.find(hashes[rows]) >= 0
        reason[rows[seen]] = 3
        rows = rows[~seen]
        # in-batch duplicates: keep the best q (then the first row) of each hash
        rows = self._best_q_per_group(rows, hashes, q, None, reason, 3, cap=1)
        # children per parent: best q first, up to max_children live children
        rows = self._best_q_per_group(rows, ps, q, self.n_children, reason, 4,
                                      cap=cfg.max_children)
        room = self._room()
        if rows.size > room:
            keep = rows[np.lexsort((rows, -q[rows]))][:room]
            reason[np.setdiff1d(rows, keep)] = 5
            rows = np.sort(keep)
        self.last_add_rejects = {r: int(np.count_nonzero(reason == i + 1))
                                 for i, r in enumerate(REJECT_REASONS)}
        for r, n in self.last_add_rejects.items():
            self.counters[f"n_{r}"] += n
        out = np.full(m, -1, dtype=np.int64)
        if rows.size == 0:
            return out
        # read parent statistics before evictions can free their slots
        par = ps[rows]
        pa, pb = self.a[par], self.b[par]
        scale = np.minimum(1.0, cfg.child_pseudo_counts / (pa + pb))
        values = {
            "task_id": self.task_id[par], "a": pa * scale, "b": pb * scale,
            "ema_mean": self.ema_mean[par], "ema_std": self.ema_std[par],
            "parent_id": parent_ids[rows], "depth": depth[rows], "operator": op[rows],
            "q": q[rows], "content_hash": hashes[rows],
        }
        if payloads is not None:
            values["payload_id"] = self.store.put_many(_pick(payloads, rows))
        slots = self._allocate(rows.size)
        ids = self._write_new(slots, values)
        self.index.insert(hashes[rows], slots)
        live_par = self.slots_of(parent_ids[rows])  # a parent may have just been evicted
        _add_counts(self.n_children, live_par[live_par >= 0], 1)
        out[rows] = ids
        return out

    @staticmethod
    def _best_q_per_group(rows, group, q, used, reason, code, cap) -> np.ndarray:
        """Keep, per value v of ``group[rows]``, the ``cap - used[v]`` rows of best q (ties:
        first row; ``used`` None: 0); mark the others ``reason = code``. Returns kept rows."""
        if rows.size == 0:
            return rows
        g = group[rows]
        gs = np.sort(g)
        starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
        counts = np.diff(np.r_[starts, gs.size])
        room = np.full(starts.size, cap, dtype=np.int64)
        if used is not None:
            room -= used[gs[starts]]
        if np.all(counts <= room):  # the common case: nothing to drop
            return rows
        order = np.lexsort((rows, -q[rows], g))
        rank = np.arange(order.size) - np.repeat(starts, counts)
        over = np.empty(order.size, dtype=bool)
        over[order] = rank >= np.repeat(room, counts)
        reason[rows[over]] = code
        return rows[~over]

    # ------------------------------------------------------------------ recording
    def record(self, ids: Sequence[int], rewards: np.ndarray, successes: np.ndarray,
               step: int) -> int:
        """Record one group of G outcomes per id (rows of ``rewards``/``successes`` [k, G]).

        Per group: a, b <- discount * (a, b) + (successes, failures); EMA of the group reward
        mean and std (the first group sets them); visits += 1; last visit = step; cool-down
        bookkeeping. Rows for stale ids are skipped (counted in ``counters['n_stale']``);
        several rows for one id are applied in order. Returns the number of rows recorded.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rewards = np.asarray(rewards, dtype=np.float64)
        successes = np.asarray(successes)
        k = ids.size
        if rewards.ndim != 2 or rewards.shape[0] != k or successes.shape != rewards.shape:
            raise ValueError(f"record: rewards and successes must both be [k={k}, G], got "
                             f"{rewards.shape} and {successes.shape}")
        if rewards.shape[1] <= self.config.std_ddof:
            raise ValueError(f"record: G={rewards.shape[1]} rollouts per group is too few for "
                             f"std_ddof={self.config.std_ddof}")
        if not np.all(np.isfinite(rewards)):
            raise ValueError("record: rewards must be finite")
        if not np.all((successes == 0) | (successes == 1)):
            raise ValueError("record: successes must be 0/1 or booleans")
        self.advance(step)
        slots = self.slots_of(ids)
        rows = np.flatnonzero(slots >= 0)
        self.counters["n_stale"] += k - rows.size
        rank = _occurrence_rank(slots[rows])
        for r in range(int(rank.max()) + 1 if rows.size else 0):
            sel = rows[rank == r]
            self._record_rows(slots[sel], rewards[sel], successes[sel].astype(np.float64), step)
        self.counters["n_recorded"] += int(rows.size)
        self._refresh(np.unique(slots[rows]))
        return int(rows.size)

    def _record_rows(self, s: np.ndarray, rew: np.ndarray, succ: np.ndarray, step: int) -> None:
        cfg = self.config
        n_succ = succ.sum(axis=1)
        self.a[s] = cfg.discount * self.a[s] + n_succ
        self.b[s] = cfg.discount * self.b[s] + (rew.shape[1] - n_succ)
        mean, std = rew.mean(axis=1), rew.std(axis=1, ddof=cfg.std_ddof)
        first = self.visits[s] == 0
        r = cfg.ema_rate
        self.ema_mean[s] = np.where(first, mean, (1 - r) * self.ema_mean[s] + r * mean)
        self.ema_std[s] = np.where(first, std, (1 - r) * self.ema_std[s] + r * std)
        self.visits[s] += 1
        self.last_visit[s] = step
        flat = std < cfg.std_eps
        streak = np.where(flat, np.minimum(self.flat_streak[s].astype(np.int64) + 1,
                                           cfg.cooldown_groups), 0)
        level = np.where(flat, self.cool_level[s], 0).astype(np.int64)
        start = (flat & (streak >= cfg.cooldown_groups) & ~self.protected[s]
                 & (self.cool_until[s] < 0))
        until = step + cfg.cooldown_base * (2 ** level)
        self.flat_streak[s] = np.where(start, 0, streak)
        self.cool_level[s] = np.where(start, np.minimum(level + 1, cfg.cooldown_max_level), level)
        self.cool_until[s[start]] = until[start]
        self.cooling.push(until[start], self.entry_id[s[start]])

    def advance(self, step: int) -> None:
        """Move the clock to ``step``: cool-downs that ended re-enter with counts halved."""
        step = int(step)
        if step <= self.step:
            return
        self.step = step
        slots = self.slots_of(self.cooling.pop_due(step))
        slots = slots[slots >= 0]
        slots = np.unique(slots[(self.cool_until[slots] >= 0) & (self.cool_until[slots] < step)])
        if slots.size:
            self.a[slots] *= 0.5
            self.b[slots] *= 0.5
            self.cool_until[slots] = -1
            self._refresh(slots)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """A copy of the whole state: arrays, clocks, counters and the payload store."""
        return {
            "config": self.config.to_dict(),
            "arrays": {n: getattr(self, n).copy() for n in FIELDS},
            "tree_weight": self.tree.leaf_weights().copy(),
            "free": self._free[: self._n_free].copy(),
            "roots": self._roots.copy(),
            "serial": self.serial,
            "step": self.step,
            "counters": dict(self.counters),
            "payloads": self.store.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], payload_path: str | None = None,
                        config: CurriculumConfig | None = None) -> "EvolvingBuffer":
        """Restore exactly. A disk payload store is truncated to what the state knew.

        With ``config`` (same capacity) LP, weights and priorities are recomputed under it.
        """
        saved = CurriculumConfig.from_dict(state["config"])
        if config is not None and config.capacity != saved.capacity:
            raise ValueError(f"capacity={config.capacity} differs from the checkpoint's "
                             f"{saved.capacity}; allowed: {saved.capacity}")
        buf = cls(saved, PayloadStore.from_state_dict(state["payloads"], payload_path))
        for n in FIELDS:
            getattr(buf, n)[:] = state["arrays"][n]
        free = np.asarray(state["free"], dtype=np.int64)
        buf._free[: free.size] = free
        buf._n_free = int(free.size)
        buf._roots = np.asarray(state["roots"], dtype=np.int64).copy()
        buf.serial, buf.step = int(state["serial"]), int(state["step"])
        buf.counters = {k: int(state["counters"].get(k, 0)) for k in _COUNTERS}
        live = buf.live_slots()
        counts = np.zeros(buf.capacity)
        counts[live] = (buf.cool_until[live] < 0) & ~buf.protected[live]
        buf.tree.set_leaves(state["tree_weight"], counts)
        kids = live[~buf.protected[live]]
        buf.index.insert(buf.content_hash[kids], kids)
        cool = live[buf.cool_until[live] >= 0]
        buf.cooling.push(buf.cool_until[cool], buf.entry_id[cool])
        if config is not None and config != saved:
            buf.config = config
            buf._set_potential()
            buf._refresh(live)
        return buf


def _operator_codes(operator: Any, m: int) -> np.ndarray:
    """Operator names or codes (one, or one per rollout) -> int8 codes into OPERATORS."""
    arr = np.asarray(operator)
    if arr.dtype.kind in "US":
        names = np.asarray(OPERATORS)
        bad = ~np.isin(arr, names)
        if bad.any():
            raise ValueError(f"operator={str(arr[bad].reshape(-1)[0])!r} is not allowed; "
                             f"allowed: {list(OPERATORS)}")
        order = np.argsort(names)
        arr = order[np.searchsorted(names, arr, sorter=order)]
    elif arr.dtype.kind not in "iu" or np.any((arr < 0) | (arr >= len(OPERATORS))):
        raise ValueError(f"operator must be names {list(OPERATORS)} or codes 0..."
                         f"{len(OPERATORS) - 1}, got {operator!r:.80}")
    arr = np.broadcast_to(arr, (m,)) if arr.ndim == 0 else arr.reshape(-1)
    if arr.size != m:
        raise ValueError(f"add_children: {arr.size} operators for {m} rollouts")
    return arr.astype(np.int8)


def _occurrence_rank(x: np.ndarray) -> np.ndarray:
    """For each element, how many equal elements come before it."""
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    start = np.ones(xs.size, dtype=bool)
    start[1:] = xs[1:] != xs[:-1]
    idx = np.flatnonzero(start)
    rank_sorted = np.arange(xs.size) - np.repeat(idx, np.diff(np.append(idx, xs.size)))
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank


def _pick(items: Sequence[Any], rows: np.ndarray) -> list[Any]:
    """items[i] for i in rows, as a list."""
    if rows.size == 0:
        return []
    got = itemgetter(*rows.tolist())(items)
    return [got] if rows.size == 1 else list(got)


def _add_counts(arr: np.ndarray, slots: np.ndarray, sign: int) -> None:
    """arr[s] += sign for each occurrence of s in slots (np.add.at without its slow path)."""
    u, n = np.unique(slots, return_counts=True)
    arr[u] += (sign * n).astype(arr.dtype)
