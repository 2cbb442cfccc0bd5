"""Curriculum speed at scale: a 1,000,000-entry EvolvingBuffer (NumPy, CPU).

Times (median over repeats, the CPU is shared): sampling a batch of 512 states, recording
512 x 8 outcomes, adding the 4,096 rollouts of that batch as children (full buffer: every
accepted child evicts an entry), and adding 4,096 children of distinct parents (worst case:
all accepted). Also the bytes per entry of the arrays and index structures, payloads excluded.

    .venv/bin/python bench/curriculum.py [--entries 1000000] [--repeats 30]

Last line: ``ratio curriculum_sample_ms_per_512 <ms>``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ace_jax.curriculum import CurriculumConfig, EvolvingBuffer, LearnabilitySampler
from ace_jax.curriculum.synthetic import fill_synthetic

TARGETS_MS = {"sample 512": 10.0, "record 512x8": 5.0, "add 4096 children": 10.0,
              "add 4096 children (distinct parents)": 10.0}


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
    times: dict[str, list[float]] = {name: [] for name in TARGETS_MS}
    accepted = []
    for rep in range(args.repeats + 2):  # the first two are warm-up
        step = rep + 1
        t = time.perf_counter()
        ids = sampler.sample(buf, k, step=step)
        t_sample = time.perf_counter() - t

        succ = rng.random((ids.size, g)) < 0.5
        rewards = np.where(succ, rng.random((ids.size, g)), 0.0)
        t = time.perf_counter()
        buf.record(ids, rewards, succ, step)
        t_record = time.perf_counter() - t

        parents = np.repeat(ids, g)
        payloads = [{"code": code, "feedback": f"score {i}"} for i in range(parents.size)]
        q, hashes = rng.random(parents.size), rng.integers(0, 2**63, parents.size, np.uint64)
        t = time.perf_counter()
        out = buf.add_children(parents, q, 2, hashes=hashes, payloads=payloads)
        t_add = time.perf_counter() - t

        open_slots = np.flatnonzero((buf.entry_id >= 0) & ~buf.protected
                                    & (buf.n_children < buf.config.max_children)
                                    & (buf.depth < buf.config.max_depth))
        distinct = buf.entry_id[rng.choice(open_slots, 4096, replace=False)]
        q, hashes = rng.random(distinct.size), rng.integers(0, 2**63, distinct.size, np.uint64)
        payloads = [{"code": code, "feedback": f"score {i}"} for i in range(distinct.size)]
        t = time.perf_counter()
        out2 = buf.add_children(distinct, q, 2, hashes=hashes, payloads=payloads)
        t_add2 = time.perf_counter() - t
        if rep >= 2:
            for name, v in zip(TARGETS_MS, (t_sample, t_record, t_add, t_add2)):
                times[name].append(v * 1e3)
            accepted.append((int((out >= 0).sum()), int((out2 >= 0).sum())))

    acc = np.median(np.array(accepted), axis=0)
    print(f"\nbuffer {buf.size:,} / {buf.capacity:,} entries, {args.repeats} repeats, "
          f"children accepted per call: {acc[0]:.0f} (batch rollouts), {acc[1]:.0f} (distinct)")
    print(f"{'operation':40s} {'median ms':>10s} {'p90 ms':>8s} {'target':>8s}  ok")
    for name, v in times.items():
        med, p90 = np.median(v), np.percentile(v, 90)
        print(f"{name:40s} {med:10.2f} {p90:8.2f} {TARGETS_MS[name]:8.1f}  "
              f"{'yes' if med <= TARGETS_MS[name] else 'NO'}")
    bpe = bytes_per_entry(buf)
    print(f"{'bytes per entry (no payloads)':40s} {bpe:10.1f} {'':8s} {200:8d}  "
          f"{'yes' if bpe < 200 else 'NO'}")
    print(f"evictions {buf.counters['n_evicted']:,}, cooling "
          f"{int((buf.cool_until >= 0).sum()):,}, eligible {buf.n_eligible:,}")
    print(f"ratio curriculum_sample_ms_per_512 {np.median(times['sample 512']):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
