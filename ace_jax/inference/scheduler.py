"""Continuous batching on a paged KV pool: one worker thread serves every caller of an engine.

A request with n samples is a group: its prompt (all but the last token) is prefilled once into
pool blocks that its n samples reference; a partial last prompt block is copied per sample
(copy-on-write). Generation blocks are allocated lazily: a group is admitted when the pool holds
its prompt blocks and each sample's blocks for its first chunk (plus one spare block per live
row), and before each chunk every running row gets the blocks that chunk reaches. When the pool
runs short, the most recently admitted group is preempted (its blocks freed, the group put back at
the head of the queue); re-admitted, its prompt is prefilled again and each sample's generated
tokens are recomputed (`paged_steps.prefill` from the prompt's end), and decoding continues with
the same per-sample keys, so its completions equal an un-preempted run's. Up to `slots` samples decode
together in compiled chunks of `chunk_steps` steps; between chunks finished rows leave, their
blocks return to the pool, and waiting rows take their slots. A chunk's block tables cover only
the slots its rows reach; with `shared_prefix` (`auto`: at least SHARED_MIN_ROWS rows per group)
a group's full prompt blocks are read once for all its rows (cascade attention) instead of once
per row. Shapes come from bucket sets (batch from the engine's batch buckets and 3/4 of them, table
widths and group counts in `quarter_octave` buckets), never from the queue, so admitting rows never recompiles.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from concurrent.futures import Future
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ace_jax.inference import paged_steps
from ace_jax.inference.buckets import pick, quarter_octave
from ace_jax.inference.kv_blocks import BlockPool, blocks_for
from ace_jax.inference.sampling import stop_ids
from rollout.engine import Completion, GenerateRequest

SHARED_PREFIX_MODES = ("auto", "always", "never")
MIN_TABLE = 16  # narrower block tables would add compiles for little work
SHARED_MIN_ROWS = 4  # `auto` reads prompts once per group when the batch has this many rows per group


@dataclasses.dataclass
class _Job:
    """One `generate` call: its completions, filled as samples finish."""

    results: list[list[Completion | None]]
    remaining: int
    version: str = ""
    future: Future = dataclasses.field(default_factory=Future)


@dataclasses.dataclass(eq=False)
class _Group:
    """One request: its prompt blocks (shared by its samples) and its samples."""

    job: _Job
    index: int
    request: GenerateRequest
    stops: tuple[int, ...]
    seeds: list[int]
    shared: list[int] = dataclasses.field(default_factory=list)
    prompt_experts: np.ndarray | None = None
    samples: list["_Sample"] = dataclasses.field(default_factory=list)
    admitted: int = 0  # admission order (the latest admitted group is preempted first)

    def __post_init__(self) -> None:
        if not self.samples:
            self.samples = [_Sample(self, j, []) for j in range(self.request.n)]

    @property
    def live(self) -> list["_Sample"]:
        """Samples still generating."""
        return [s for s in self.samples if not s.finished]

    @property
    def prefix(self) -> int:
        """Prompt tokens prefilled (all but the last, which the first decode step feeds)."""
        return len(self.request.input_ids) - 1


@dataclasses.dataclass(eq=False)
class _Sample:
    group: _Group
    index: int
    private: list[int]
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    experts: list[np.ndarray] = dataclasses.field(default_factory=list)
    finished: bool = False

    @property
    def table(self) -> list[int]:
        return self.group.shared + self.private


def _width(need: int, full: int, least: int = MIN_TABLE) -> int:
    """Block-table width for rows that reach `need` blocks of tables up to `full` long: a
    `quarter_octave` bucket of at least `least` blocks, at most the power of two >= full."""
    return min(1 << (full - 1).bit_length(), max(least, quarter_octave(need)))


class ContinuousScheduler:
    """Admits, prefills, forks and decodes the rows of all callers of `engine` (a JaxEngine)."""

    def __init__(self, engine: Any, *, slots: int, block_size: int, pool_blocks: int, chunk_steps: int,
                 shared_prefix: str = "auto"):
        if shared_prefix not in SHARED_PREFIX_MODES:
            raise ValueError(f"shared_prefix must be one of {list(SHARED_PREFIX_MODES)}, got {shared_prefix!r}")
        if slots > engine.buckets.max_batch:
            raise ValueError(f"decode slots {slots} exceed the largest batch bucket {engine.buckets.max_batch}")
        self.engine = engine
        self.slots = slots
        self.block_size = block_size
        self.chunk_steps = chunk_steps
        self.shared_prefix = shared_prefix
        # The engine's batch buckets and 3/4 of each from 8 up (a pool holding 3 of 4 groups fills 24 of 32).
        self._batches = tuple(sorted({*engine.buckets.batch, *(3 * x // 4 for x in engine.buckets.batch if x >= 8)}))
        self.blocks = BlockPool(pool_blocks)
        self.shapes: set[tuple] = set()  # compiled (kind, shape...) keys seen
        self.decode_chunks = 0
        self.preemptions = 0  # groups preempted (freed and queued again) for lack of KV blocks
        self._admissions = 0
        # Wall seconds of the worker: `prefill` (prefill + fork, waited for), `decode` (decode chunks
        # until their outputs reach the host), `host` (the rest: admission, tables, bookkeeping);
        # `row_steps` / `batch_steps`: decode steps of live rows / of the padded batches.
        self.profile: collections.Counter = collections.Counter()
        self._kv = None
        self._pending: collections.deque[_Group] = collections.deque()
        self._waiting: collections.deque[_Sample] = collections.deque()
        self._running: list[_Sample] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------- callers
    def submit(self, requests: Sequence[GenerateRequest], seeds: list[list[int]]) -> Future:
        """Queue requests (already validated; `seeds[i][j]` for sample j of request i)."""
        job = _Job([[None] * r.n for r in requests], sum(r.n for r in requests))
        groups = []
        for i, (req, s) in enumerate(zip(requests, seeds)):
            sp = req.sampling
            stops = stop_ids(sp, self.engine.eos_token_ids)
            group = _Group(job, i, req, stops, s)
            need = self._blocks_needed(group)
            if need > self.blocks.blocks - 1:
                raise ValueError(f"request {i}: prompt {len(req.input_ids)} + max_new_tokens {sp.max_new_tokens} "
                                 f"x n={req.n} needs {need} KV blocks of {self.block_size}; the pool has "
                                 f"{self.blocks.blocks - 1} (raise kv_pool_tokens)")
            groups.append(group)
        if not groups:
            job.future.set_result([])
            return job.future
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine's scheduler is closed")
            self._pending.extend(groups)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="jax-engine-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def drop_pool(self) -> None:
        """Free the device pool (call with the engine lock held, so no chunk runs)."""
        self._kv = None

    @property
    def pool_bytes(self) -> int:
        """Bytes of the device KV pool (allocated on first use)."""
        return self.blocks.blocks * self._block_bytes()

    @property
    def peak_bytes(self) -> int:
        """High-water mark of the KV bytes held by live rows."""
        return self.blocks.peak_used * self._block_bytes()

    # ------------------------------------------------------------------------- worker
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            with self.engine._lock:
                try:
                    while self._pending or self._waiting or self._running:
                        self._tick()
                except BaseException as exc:  # noqa: BLE001 - handed to the callers
                    self._fail_all(exc)

    def _tick(self) -> None:
        start, device = time.perf_counter(), 0.0
        self._grow()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
            self._fork(admitted)
            self._recompute(admitted)
            jax.block_until_ready(self._kv)
            device = time.perf_counter() - start
            self.profile["prefill"] += device
        while self._waiting and len(self._running) < self.slots:
            self._running.append(self._waiting.popleft())
        if self._running:
            device += self._decode()
        self.profile["host"] += time.perf_counter() - start - device

    def _layout(self, group: _Group) -> tuple[int, int]:
        """(full prompt blocks shared by the samples, blocks of one sample's whole table)."""
        full = group.prefix // self.block_size
        return full, blocks_for(group.prefix + group.request.sampling.max_new_tokens, self.block_size)

    def _blocks_needed(self, group: _Group) -> int:
        """Blocks of a group's whole generation (it must fit the pool alone)."""
        full, total = self._layout(group)
        return full + group.request.n * (total - full)

    def _chunk_blocks(self, s: _Sample) -> int:
        """Blocks of a sample's table (shared + private) that its next chunk reaches."""
        g = s.group
        return min(blocks_for(g.prefix + len(s.tokens) + self.chunk_steps, self.block_size), self._layout(g)[1])

    def _admit_need(self, group: _Group) -> int:
        """Blocks to admit a group: its prompt blocks and each live sample's first chunk."""
        full = self._layout(group)[0]
        return full + sum(self._chunk_blocks(s) - full for s in group.live)

    def _admit(self) -> list[_Group]:
        """Take queued groups (FIFO) while the pool holds their first chunks, with one spare block
        per live row for the next growth, and slots wait for rows."""
        admitted = []
        with self._cond:
            while self._pending and len(self._waiting) < self.slots:  # admitted samples wait there
                group = self._pending[0]
                need = self._admit_need(group)
                busy = self._running or self._waiting or admitted
                spare = len(self._running) + len(self._waiting) + len(group.live) if busy else 0
                if need + spare > self.blocks.free:
                    break
                self._pending.popleft()
                group.job.version = self.engine.weight_version  # the weights it runs with (lock held)
                self._allocate(group)
                admitted.append(group)
        return admitted

    def _allocate(self, group: _Group) -> None:
        full = self._layout(group)[0]
        live = group.live
        group.shared = self.blocks.allocate(full)
        self.blocks.share(group.shared, len(live) - 1)  # one reference per live sample
        for s in live:
            s.private = self.blocks.allocate(self._chunk_blocks(s) - full)
        self._admissions += 1
        group.admitted = self._admissions
        self._waiting.extend(live)

    def _grow(self) -> None:
        """Give each running row the blocks its next chunk reaches, preempting the most recently
        admitted group while the pool is short."""
        for s in list(self._running):
            if s not in self._running:  # preempted with its group
                continue
            while (short := self._chunk_blocks(s) - len(s.table)) > self.blocks.free:
                self._preempt()
                if s not in self._running:
                    break
            else:
                s.private += self.blocks.allocate(short) if short > 0 else []

    def _preempt(self) -> None:
        """Free the latest admitted group's blocks and queue it again first (its samples keep their
        tokens, logprobs and experts; re-admission recomputes their KV)."""
        groups = {id(s.group): s.group for s in [*self._running, *self._waiting]}
        if len(groups) < 2:
            raise RuntimeError("KV pool exhausted by a single group (its reservation was checked at submit)")
        victim = max(groups.values(), key=lambda g: g.admitted)
        for s in victim.live:
            self.blocks.release(s.private)
            self.blocks.release(victim.shared)
            s.private = []
        victim.shared = []
        self._running = [s for s in self._running if s.group is not victim]
        self._waiting = collections.deque(s for s in self._waiting if s.group is not victim)
        with self._cond:
            self._pending.appendleft(victim)
        self.preemptions += 1
        self.profile["preemptions"] += 1

    def _prefill(self, groups: list[_Group]) -> None:
        """Write each group's prompt prefix once into its blocks (its first live sample's table)."""
        eng, bs = self.engine, self.block_size
        todo = [g for g in groups if g.prefix > 0]
        for g in groups:
            if g.prefix == 0 and g.prompt_experts is None:
                g.prompt_experts = self._no_experts()
        padded = lambda g: -(-pick(g.prefix, eng.buckets.prompt, "prompt length") // bs) * bs  # noqa: E731
        for p, b, chunk in self._length_batches(todo, padded):
            ids = np.zeros((b, p), np.int32)
            lengths = np.zeros(b, np.int32)
            tables = np.zeros((b, p // bs), np.int32)
            for i, g in enumerate(chunk):
                ids[i, :g.prefix] = g.request.input_ids[:-1]
                lengths[i] = g.prefix
                table = g.live[0].table[:blocks_for(g.prefix, bs)]
                tables[i, :len(table)] = table
            routed = any(g.request.return_routed_experts and g.prompt_experts is None for g in chunk)
            self.shapes.add(("prefill", b, p, routed))
            self._kv, experts = paged_steps.prefill(eng.state, self._pool(), ids, lengths, tables, eng.layers,
                                                    graphdef=eng.graphdef, routed=routed)
            if routed:
                experts = np.asarray(experts)
                for i, g in enumerate(chunk):
                    if g.prompt_experts is None:
                        g.prompt_experts = experts[i, :g.prefix]

    def _fork(self, groups: list[_Group]) -> None:
        """Copy-on-write: each sample beyond the first gets its own copy of the partial prompt block."""
        pairs = [(g.live[0].private[0], s.private[0]) for g in groups if g.prefix % self.block_size
                 for s in g.live[1:]]
        if not pairs:
            return
        width = 1 << (len(pairs) - 1).bit_length()
        src, dst = np.zeros(width, np.int32), np.zeros(width, np.int32)
        src[:len(pairs)], dst[:len(pairs)] = zip(*pairs)
        self.shapes.add(("copy", width))
        self._kv = paged_steps.copy_blocks(self._pool(), src, dst)

    def _recompute(self, groups: list[_Group]) -> None:
        """Re-admitted samples: write the KV of their fed tokens (the prompt's last, then all generated
        but the last) from the prompt's end, through their own tables."""
        eng = self.engine
        rows = [s for g in groups for s in g.live if s.tokens]
        lengths = sorted(set(eng.buckets.prompt) | set(eng.buckets.generate))
        for p, b, chunk in self._length_batches(rows, lambda s: pick(len(s.tokens), lengths, "generated length")):
            ids, lens, starts = np.zeros((b, p), np.int32), np.zeros(b, np.int32), np.zeros(b, np.int32)
            width = quarter_octave(max(len(s.table) for s in chunk))
            tables = np.zeros((b, width), np.int32)
            for i, s in enumerate(chunk):
                fed = [s.group.request.input_ids[-1], *s.tokens[:-1]]
                ids[i, :len(fed)], lens[i], starts[i] = fed, len(fed), s.group.prefix
                tables[i, :len(s.table)] = s.table
            self.shapes.add(("recompute", b, p, width))
            self._kv, _ = paged_steps.prefill(eng.state, self._pool(), ids, lens, tables, eng.layers, starts,
                                              graphdef=eng.graphdef, routed=False)

    def _length_batches(self, items: list, length_of) -> Iterator[tuple[int, int, list]]:
        """(padded length, batch bucket, items) for `items` grouped by `length_of` (a length bucket),
        shortest first, in batches of at most the engine's largest batch bucket."""
        buckets = self.engine.buckets
        by_len: dict[int, list] = collections.defaultdict(list)
        for item in items:
            by_len[length_of(item)].append(item)
        for p, same in sorted(by_len.items()):
            for start in range(0, len(same), buckets.max_batch):
                chunk = same[start:start + buckets.max_batch]
                yield p, pick(len(chunk), buckets.batch, "batch size"), chunk

    def _decode(self) -> float:
        """One decode chunk of the running rows; returns its seconds on the device."""
        eng, rows = self.engine, self._running
        # Batches below a quarter of the slots would add compiles for short tails only.
        b = pick(max(len(rows), self.slots // 4), self._batches, "batch size")
        tok, pos, gen = np.zeros(b, np.int32), np.zeros(b, np.int32), np.zeros(b, np.int32)
        done = np.ones(b, bool)
        max_new = np.ones(b, np.int32)
        stop = np.full((b, eng.max_stop_ids), -1, np.int32)
        temp, top_p, min_p = np.zeros(b, np.float32), np.ones(b, np.float32), np.zeros(b, np.float32)
        top_k = np.full(b, -1, np.int32)
        seeds = np.zeros(b, np.uint32)
        for i, s in enumerate(rows):
            g, sp = s.group, s.group.request.sampling
            tok[i] = s.tokens[-1] if s.tokens else g.request.input_ids[-1]
            gen[i] = len(s.tokens)
            pos[i] = g.prefix + gen[i]
            done[i] = False
            max_new[i] = sp.max_new_tokens
            stop[i, :len(g.stops)] = g.stops
            temp[i], top_p[i], top_k[i], min_p[i] = sp.temperature, sp.top_p, sp.top_k, sp.min_p
            seeds[i] = g.seeds[s.index]
        tables, shared = self._tables(rows, b, pos)
        routed = any(s.group.request.return_routed_experts for s in rows)
        self.shapes.add(("decode", b, tables.shape[1], self.chunk_steps, routed,
                         None if shared is None else (*shared[0].shape, shared[4].shape[1])))
        start = time.perf_counter()
        self._kv, ys = paged_steps.decode_chunk(
            eng.state, self._pool(), tok, pos, gen, done, max_new, stop, temp, top_k, top_p, min_p, seeds, tables,
            shared, eng.layers, graphdef=eng.decode_graphdef, steps=self.chunk_steps, routed=routed)
        self.decode_chunks += 1
        toks, lps, active, hit = (np.asarray(y) for y in ys[:4])
        experts = np.asarray(ys[4]) if routed else None
        seconds = time.perf_counter() - start
        self.profile["decode"] += seconds
        self.profile["row_steps"] += int(active.sum())
        self.profile["batch_steps"] += b * self.chunk_steps
        still = []
        for i, s in enumerate(rows):
            reason = None
            for t in range(self.chunk_steps):
                if not active[t, i]:
                    break
                s.tokens.append(int(toks[t, i]))
                s.logprobs.append(float(lps[t, i]))
                if experts is not None and s.group.request.return_routed_experts:
                    s.experts.append(experts[t, i])
                if hit[t, i]:
                    reason = "stop"
                elif len(s.tokens) >= s.group.request.sampling.max_new_tokens:
                    reason = "length"
                if reason:
                    break
            if reason:
                self._finish(s, reason)
            else:
                still.append(s)
        self._running = still
        return seconds

    def _tables(self, rows: list[_Sample], b: int, pos: np.ndarray):
        """Block tables [b, M] covering each row's slots up to the chunk's last, and the batch's
        `SharedPrefix` arrays (tables, lengths, group, member, grid) when it reads prompts once per group
        (the tables then hold the private blocks only), else None."""
        bs = self.block_size
        need = [self._chunk_blocks(s) for s in rows]
        total = max(self._layout(s.group)[1] for s in rows)  # the widest table a row can reach
        groups = list({id(s.group): s.group for s in rows}.values())
        widest = max(len(g.shared) for g in groups)
        if self.shared_prefix == "never" or widest == 0 or (
                self.shared_prefix == "auto" and len(groups) * SHARED_MIN_ROWS > len(rows)):
            tables = np.zeros((b, _width(max(need), total)), np.int32)
            for i, (s, n) in enumerate(zip(rows, need)):
                tables[i, :n] = s.table[:n]
            return tables, None
        index = {id(g): u for u, g in enumerate(groups)}
        prefix = np.zeros((quarter_octave(len(groups)), quarter_octave(widest)), np.int32)
        lengths = np.zeros(prefix.shape[0], np.int32)
        for u, g in enumerate(groups):
            prefix[u, :len(g.shared)] = g.shared
            lengths[u] = len(g.shared) * bs
        private = [n - len(s.group.shared) for s, n in zip(rows, need)]
        most = max(self._layout(s.group)[1] - len(s.group.shared) for s in rows)
        tables = np.zeros((b, _width(max(private), most, MIN_TABLE // 2)), np.int32)
        group, member = np.zeros(b, np.int32), np.zeros(b, np.int32)
        counts = [0] * len(groups)
        for i, (s, n) in enumerate(zip(rows, private)):
            tables[i, :n] = s.private[:n]
            group[i] = index[id(s.group)]
            member[i] = counts[group[i]]
            counts[group[i]] += 1
        grid = np.zeros((prefix.shape[0], quarter_octave(max(counts))), np.int32)
        grid[group[:len(rows)], member[:len(rows)]] = np.arange(len(rows))
        return tables, (prefix, lengths, group, member, grid)

    def _finish(self, s: _Sample, reason: str) -> None:
        g = s.group
        self.blocks.release(s.private)
        self.blocks.release(g.shared)
        s.finished = True
        experts = None
        if g.request.return_routed_experts:
            experts = np.concatenate([g.prompt_experts, np.stack(s.experts)]).astype(np.int32)
        g.job.results[g.index][s.index] = Completion(
            token_ids=s.tokens, logprobs=s.logprobs if g.request.return_logprob else None, finish_reason=reason,
            prompt_tokens=len(g.request.input_ids), routed_experts=experts, weight_version=g.job.version,
            matched_stop=s.tokens[-1] if reason == "stop" else None)
        g.job.remaining -= 1
        if g.job.remaining == 0:
            g.job.future.set_result(g.job.results)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            jobs = {id(g.job): g.job for g in self._pending}
            jobs.update({id(s.group.job): s.group.job for s in [*self._waiting, *self._running]})
            self._pending.clear()
        self._waiting.clear()
        self._running = []
        self._kv = None
        self.blocks = BlockPool(self.blocks.blocks)
        for job in jobs.values():
            if not job.future.done():
                job.future.set_exception(exc)

    # ------------------------------------------------------------------------- device pool
    def _pool(self):
        if self._kv is None:
            model = nnx.merge(self.engine.graphdef, self.engine.state)
            self._kv = model.init_paged_cache(self.blocks.blocks, self.block_size,
                                              per_layer=self.engine.layers is not None)
            self._kv = self._place_pool(self._kv)
        return self._kv

    def _place_pool(self, kv):
        """On a mesh: the pool's KV heads (and head_dim) sharded as the served k_proj's."""
        leaf = next(v for p, v in zip(self.engine._paths, jax.tree.leaves(self.engine.state)) if "k_proj" in p)
        sharding = getattr(leaf, "sharding", None)
        if not isinstance(sharding, NamedSharding) or sharding.is_fully_replicated:
            return kv
        spec = tuple(sharding.spec) + (None,) * (4 - len(sharding.spec))  # k_proj [layers, embed, kv_heads, head_dim]
        return jax.tree.map(lambda a: jax.device_put(a, NamedSharding(
            sharding.mesh, PartitionSpec(*(None,) * (a.ndim - 2), spec[2], spec[3]))), kv)

    def _block_bytes(self) -> int:
        cfg = self.engine.config
        itemsize = jnp.dtype(cfg.compute_dtype).itemsize
        return 2 * cfg.num_hidden_layers * self.block_size * cfg.num_key_value_heads * cfg.head_dim * itemsize

    def _no_experts(self) -> np.ndarray:
        cfg = self.engine.config
        return np.zeros((0, cfg.num_moe_layers, cfg.num_experts_per_tok), np.int32)
