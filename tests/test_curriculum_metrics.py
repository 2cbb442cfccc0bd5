"""Per-step curriculum metrics against direct computation, and the PNG."""

import numpy as np

from ace_jax.curriculum import (CurriculumConfig, EvolvingBuffer, LearnabilitySampler,
                                MetricsLog, step_metrics)
from ace_jax.curriculum.synthetic import fill_synthetic


def _setup():
    buf = EvolvingBuffer(CurriculumConfig(capacity=200, max_depth=4))
    fill_synthetic(buf, 200, np.random.default_rng(0), n_tasks=8)
    return buf, LearnabilitySampler(0)


def test_step_metrics_match_direct_computation():
    buf, sampler = _setup()
    ids = sampler.sample(buf, 40, step=2)
    m = step_metrics(buf, ids)
    live = np.flatnonzero(buf.entry_id >= 0)
    idx = [int(np.flatnonzero(buf.entry_id == i)[0]) for i in ids]
    p = buf.a[idx] / (buf.a[idx] + buf.b[idx])
    assert m["frontier_fraction"] == np.mean((p > 0.2) & (p < 0.8))
    assert m["root_share"] == np.mean([buf.protected[i] for i in idx])
    assert m["size"] == live.size == sum(m["lp_hist"]) == sum(m["depth_hist"])
    assert m["depth_hist"] == [int(np.sum(buf.depth[live] == d)) for d in range(5)]
    edges = np.array(m["lp_edges"])
    assert m["lp_hist"][0] == np.sum((buf.lp[live] >= edges[0]) & (buf.lp[live] < edges[1]))
    assert m["n_eligible"] == buf.n_eligible and m["step"] == 2 and m["n_sampled"] == 40


def test_metrics_log_counts_evictions_per_step_and_plots(tmp_path):
    buf, sampler = _setup()
    log = MetricsLog()
    rng = np.random.default_rng(1)
    for step in range(6):
        ids = sampler.sample(buf, 16, step=step)
        succ = rng.random((ids.size, 4)) < 0.5
        buf.record(ids, succ * 1.0, succ, step)
        before = buf.counters["n_evicted"]
        buf.add_children(np.repeat(ids, 4), rng.random(ids.size * 4), 2,
                         hashes=rng.integers(0, 2**63, ids.size * 4, dtype=np.uint64))
        m = log.update(buf, ids, step)
        assert m["evictions"] == buf.counters["n_evicted"] - before
    assert sum(r["evictions"] for r in log.records) > 0
    path = tmp_path / "curriculum.png"
    log.plot(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
