"""Curriculum speed at scale: a 1,000,000-entry EvolvingBuffer (NumPy, CPU).

Times (median wall and CPU time over repeats; the CPU is shared, so the wall time of a loaded
machine can be several times the CPU time): sampling a batch of 512 states, recording
512 x 8 outcomes, adding the 4,096 rollouts of that batch as children (full buffer: every
accepted child evicts an entry; with max_children 4 about 1,150 of the 4,096 are accepted), and,
as a stress row, 4,096 children of distinct parents (all accepted, so 4,096 evictions). Also
the bytes per entry of the arrays and index structures, payloads excluded. The sum tree
propagates lazily, so the sampling row includes recomputing the tree for the previous step's
records and children, and the stress row includes its own propagation.

    .venv/bin/python bench/curriculum.py [--entries 1000000] [--repeats 30]

Last line: ``ratio curriculum_sample_ms_per_512 <ms>``.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

import numpy as np

from ace_jax.curriculum import CurriculumConfig, EvolvingBuffer, LearnabilitySampler
from ace_jax.curriculum.synthetic import fill_synthetic

TARGETS_MS = {"sample 512": 10.0, "record 512x8": 5.0,
              "add 4096 children (512 x 8 rollouts)": 10.0,
              "stress: 4096 accepted, distinct parents": 10.0}


@contextmanager
def timed(out: list):
    """Append (wall ms, cpu ms) of the block to ``out``."""
    w, c = time.perf_counter(), time.process_time()
    yield
    out.append(((time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3))


def bytes_per_entry(buf: EvolvingBuffer) -> float:
    arrays = sum(v.nbytes for v in vars(buf).values() if isinstance(v, np.ndarray))
    return (arrays + buf.tree.nbytes() + buf.index.nbytes()) / buf.capacity


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--group", type=int, default=8)
    args = ap.parse_args()
    k, g = args.batch, args.group

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    buf = EvolvingBuffer(CurriculumConfig(capacity=args.entries))
    fill_synthetic(buf, args.entries, rng, n_tasks=256, group_size=g)
    print(f"built {buf.size:,} entries in {time.perf_counter() - t0:.1f} s "
          f"(eligible {buf.n_eligible:,})", flush=True)
    sampler = LearnabilitySampler(seed=0)
    code = "import pandas as pd\n" * 20
    times: dict[str, list] = {name: [] for name in TARGETS_MS}
    accepted = []
    load0 = os.getloadavg()[0]
    for rep in range(args.repeats + 2):  # the first two are warm-up
        t = {name: [] for name in TARGETS_MS}
        step = rep + 1  # sampling also propagates the tree for the last step's changes
        with timed(t["sample 512"]):
            ids = sampler.sample(buf, k, step=step)

        succ = rng.random((ids.size, g)) < 0.5
        rewards = np.where(succ, rng.random((ids.size, g)), 0.0)
        with timed(t["record 512x8"]):
            buf.record(ids, rewards, succ, step)

        parents = np.repeat(ids, g)
        payloads = [{"code": code, "feedback": f"score {i}"} for i in range(parents.size)]
        q, hashes = rng.random(parents.size), rng.integers(0, 2**63, parents.size, np.uint64)
        with timed(t["add 4096 children (512 x 8 rollouts)"]):
            out = buf.add_children(parents, q, 2, hashes=hashes, payloads=payloads)

        if rep >= 2:
            for name in ("sample 512", "record 512x8", "add 4096 children (512 x 8 rollouts)"):
                times[name] += t[name]
            accepted.append((out >= 0).sum())

    # stress phase: all 4,096 accepted; timed with the tree propagation it causes
    buf.tree.flush()
    stress = "stress: 4096 accepted, distinct parents"
    for rep in range(args.repeats + 2):
        open_slots = np.flatnonzero((buf.entry_id >= 0) & ~buf.protected
                                    & (buf.n_children < buf.config.max_children)
                                    & (buf.depth < buf.config.max_depth))
        distinct = buf.entry_id[rng.choice(open_slots, 4096, replace=False)]
        q, hashes = rng.random(distinct.size), rng.integers(0, 2**63, distinct.size, np.uint64)
        payloads = [{"code": code, "feedback": f"score {i}"} for i in range(distinct.size)]
        t = []
        with timed(t):
            out2 = buf.add_children(distinct, q, 2, hashes=hashes, payloads=payloads)
            buf.tree.flush()
        if rep >= 2:
            times[stress] += t
            assert (out2 >= 0).all()

    print(f"\nbuffer {buf.size:,} / {buf.capacity:,} entries, {args.repeats} repeats, "
          f"children accepted of the 512 x 8 rollouts: {np.median(accepted):.0f}; "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'operation':40s} {'wall ms':>8s} {'p90':>7s} {'cpu ms':>7s} {'target':>7s}  ok")
    for name, v in times.items():
        wall, cpu = np.array(v).T
        med = np.median(wall)
        print(f"{name:40s} {med:8.2f} {np.percentile(wall, 90):7.2f} {np.median(cpu):7.2f} "
              f"{TARGETS_MS[name]:7.1f}  {'yes' if med <= TARGETS_MS[name] else 'NO'}")
    step_ms = sum(np.array(times[n]) for n in list(TARGETS_MS)[:3])
    print(f"{'one step (sample + record + add)':40s} {np.median(step_ms[:, 0]):8.2f} "
          f"{np.percentile(step_ms[:, 0], 90):7.2f} {np.median(step_ms[:, 1]):7.2f}")
    bpe = bytes_per_entry(buf)
    print(f"{'bytes per entry (no payloads)':40s} {bpe:8.1f} {'':7s} {'':7s} {200:7d}  "
          f"{'yes' if bpe < 200 else 'NO'}")
    print(f"evictions {buf.counters['n_evicted']:,}, cooling "
          f"{int((buf.cool_until >= 0).sum()):,}, eligible {buf.n_eligible:,}")
    sample_ms = np.median(np.array(times["sample 512"])[:, 0])
    print(f"ratio curriculum_sample_ms_per_512 {sample_ms:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
