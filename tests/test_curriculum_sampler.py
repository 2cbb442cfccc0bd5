"""LearnabilitySampler: the spec's batch rule, its probabilities, reproducibility, the frontier."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import softmax

from ace_jax.curriculum import CurriculumConfig, EvolvingBuffer, LearnabilitySampler
from ace_jax.curriculum.synthetic import fill_synthetic

SETTINGS = settings(max_examples=20, deadline=None)


def _lp_direct(buf, slots):
    """LP from the spec's formulas, written out here (not the package's registry)."""
    cfg = buf.config
    a, b = buf.a[slots], buf.b[slots]
    q, n = buf.q[slots].astype(np.float64), buf.visits[slots].astype(np.float64)
    return {
        "frontier": (4 * a * b / ((a + b) * (a + b + 1)) * (1 - q) ** cfg.beta
                     + cfg.c / np.sqrt(1 + n)),
        "variance": buf.ema_std[slots].astype(np.float64),
        "p1mp": 4 * (a / (a + b)) * (b / (a + b)),
        "uniform": np.ones(slots.size),
    }[cfg.potential]


def _p_direct(buf):
    """Spec: P(s) = (1 - eps) softmax(LP / tau) + eps / n over non-root, not-cooling entries."""
    live = np.flatnonzero(buf.entry_id >= 0)
    cooling = buf.cool_until[live] >= buf.step  # cool-down covers the current step
    assert np.array_equal(cooling, buf.cool_until[live] >= 0)
    elig = live[~buf.protected[live] & ~cooling]
    eps, n = buf.config.eps, elig.size
    p = (1 - eps) * softmax(_lp_direct(buf, elig) / buf.config.tau) + eps / n
    return buf.entry_id[elig], p


def _random_buffer(seed, potential="frontier", tau=0.25, eps=0.05, capacity=120, **kw):
    rng = np.random.default_rng(seed)
    buf = EvolvingBuffer(CurriculumConfig(capacity=capacity, potential=potential, tau=tau,
                                          eps=eps, cooldown_groups=1, cooldown_base=5, **kw))
    fill_synthetic(buf, capacity, rng, n_tasks=6, group_size=4)
    ids = buf.entry_id[buf.live_slots()]
    flat = rng.random(ids.size) < 0.2  # some zero-variance groups -> cooling entries
    succ = (rng.random((ids.size, 4)) < rng.random((ids.size, 1))) & ~flat[:, None]
    buf.record(ids, np.where(succ, rng.random(succ.shape), 0.0), succ, 1)
    return buf


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(["frontier", "variance", "p1mp", "uniform"]),
       st.floats(0.02, 2.0), st.floats(0.0, 1.0))
def test_probabilities_equal_the_spec_formula(seed, potential, tau, eps):
    buf = _random_buffer(seed, potential, tau, eps)
    assert (buf.cool_until >= 0).any()
    ids, p = LearnabilitySampler().probabilities(buf)
    want_ids, want = _p_direct(buf)
    assert np.array_equal(ids, want_ids)
    np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-15)
    assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p >= eps / p.size * (1 - 1e-12))  # the uniform floor


def test_tiny_temperature_falls_back_to_a_stable_softmax():
    buf = _random_buffer(0, tau=1e-4)  # every exp((LP - bound) / tau) underflows to 0
    ids, p = LearnabilitySampler().probabilities(buf)
    np.testing.assert_allclose(p, _p_direct(buf)[1], rtol=1e-9)
    assert np.unique(LearnabilitySampler(0).sample(buf, 20)).size == 20


@pytest.mark.parametrize("dense_below", [0, 10_000])  # sum-tree stream / Gumbel-top-k
def test_draws_follow_successive_sampling(dense_below):
    """First draw ~ P; inclusion in a batch of 2 = P_i + sum_j P_j P_i / (1 - P_j)."""
    buf = _random_buffer(3, capacity=40, root_mix=0.0)
    ids, p = _p_direct(buf)
    sampler = LearnabilitySampler(0, dense_below=dense_below)
    n_rep = 6000
    first = np.zeros(ids.size)
    incl = np.zeros(ids.size)
    pos = {int(i): j for j, i in enumerate(ids)}
    for _ in range(n_rep):
        batch = sampler.sample(buf, 2)
        first[pos[int(batch[0])]] += 1
        incl[[pos[int(i)] for i in batch]] += 1
    want_incl = p + p * (np.sum(p / (1 - p)) - p / (1 - p))
    for got, want in ((first / n_rep, p), (incl / n_rep, want_incl)):
        tol = 4.5 * np.sqrt(want * (1 - want) / n_rep) + 1e-3
        assert np.all(np.abs(got - want) <= tol)


def test_large_pool_uses_the_tree_and_matches_p():
    """n >> batch: the i.i.d.-stream path; single-draw frequencies over repeated batches."""
    buf = _random_buffer(5, capacity=3000, root_mix=0.0)
    ids, p = _p_direct(buf)
    sampler = LearnabilitySampler(1, dense_below=0)
    counts = np.zeros(ids.size)
    order = np.argsort(ids)
    n_rep = 400
    for _ in range(n_rep):
        batch = sampler.sample(buf, 2)
        assert np.unique(batch).size == 2
        counts[order[np.searchsorted(ids[order], batch[:1])]] += 1
    # compare on groups of entries binned by probability (each bin has many draws)
    bins = np.quantile(p, [0, 0.25, 0.5, 0.75, 1.0])
    which = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 3)
    for b in range(4):
        want = p[which == b].sum()
        got = counts[which == b].sum() / n_rep
        assert abs(got - want) <= 4.5 * np.sqrt(want * (1 - want) / n_rep)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.integers(0, 10**6))
def test_batches_are_distinct_reproducible_and_follow_the_root_rule(seed, k, sampler_seed):
    buf = _random_buffer(seed)
    a = LearnabilitySampler(sampler_seed, dense_below=0).sample(buf, k)
    b = LearnabilitySampler(sampler_seed, dense_below=0).sample(buf, k)
    assert np.array_equal(a, b)
    assert np.unique(a).size == a.size == min(k, buf.root_ids.size + buf.n_eligible)
    assert np.all(buf.contains(a))
    f = buf.fields(a)
    assert np.all(f["cool_until"] < 0)  # cooling entries are never drawn
    is_root = f["protected"]
    assert np.all(is_root[: is_root.sum()])  # roots come first
    c = LearnabilitySampler(0).sample(buf, k, rng=np.random.default_rng(sampler_seed))
    d = LearnabilitySampler(1).sample(buf, k, rng=np.random.default_rng(sampler_seed))
    assert np.array_equal(c, d)  # an explicit rng decides


def test_root_count_is_binomial_and_roots_are_one_per_task():
    buf = EvolvingBuffer(CurriculumConfig(capacity=400, root_mix=0.25))
    fill_synthetic(buf, 400, np.random.default_rng(0), n_tasks=40)
    sampler = LearnabilitySampler(2)
    k, n = 32, 3000
    counts = []
    for _ in range(n):
        batch = sampler.sample(buf, k)
        f = buf.fields(batch, ["protected", "task_id"])
        roots = f["task_id"][f["protected"]]
        assert np.unique(roots).size == roots.size
        counts.append(roots.size)
    counts = np.array(counts)
    assert counts.mean() == pytest.approx(k * 0.25, abs=4 * np.sqrt(k * 0.25 * 0.75 / n))
    assert counts.var() == pytest.approx(k * 0.25 * 0.75, rel=0.15)


def test_few_eligible_entries_are_topped_up_with_roots():
    buf = EvolvingBuffer(CurriculumConfig(capacity=50, root_mix=0.0))
    roots = buf.add_roots(np.arange(10))
    kids = buf.add_children(roots[:3], [0.1, 0.2, 0.3], 2, hashes=[1, 2, 3])
    batch = LearnabilitySampler(0).sample(buf, 8)
    assert set(kids.tolist()) <= set(batch.tolist()) and batch.size == 8
    assert LearnabilitySampler(0).sample(buf, 40).size == 13


def test_a_stream_stuck_on_one_heavy_entry_falls_back_exactly():
    """eps = 0 and a tiny tau: one entry holds almost all mass; the rest come by Gumbel-top-k."""
    buf = EvolvingBuffer(CurriculumConfig(capacity=200, potential="p1mp", eps=0.0, tau=0.005,
                                          root_mix=0.0, cooldown_groups=100, max_children=200))
    roots = buf.add_roots([0])
    kids = buf.add_children(np.repeat(roots, 150), np.zeros(150), 2, hashes=np.arange(150))
    buf.record(kids[:1], np.tile([0.0, 1.0], (1, 4)), np.tile([0, 1], (1, 4)), 0)  # p = 1/2
    succ = np.zeros((149, 8), bool)
    succ[:, 0] = True  # p = 1/9 for the rest
    buf.record(kids[1:], succ * 1.0, succ, 0)
    ids, p = LearnabilitySampler().probabilities(buf)
    assert p[ids != kids[0]].sum() < 1e-29
    batch = LearnabilitySampler(0, dense_below=0).sample(buf, 5)
    assert batch[0] == kids[0] and np.unique(batch).size == 5 and np.all(np.isin(batch, kids))


def test_sampler_state_round_trip_continues_the_stream():
    buf = _random_buffer(4)
    s = LearnabilitySampler(11)
    s.sample(buf, 10)
    s2 = LearnabilitySampler.from_state_dict(s.state_dict())
    assert np.array_equal(s.sample(buf, 10), s2.sample(buf, 10))
    assert s2.rng.bit_generator.state == s.rng.bit_generator.state


def _simulate(potential: str, seed: int) -> float:
    """Share of non-root samples spent on states with true 0.2 < p < 0.8."""
    rng = np.random.default_rng(seed)
    n, g, k = 500, 8, 32
    kind = rng.random(n)
    p_true = np.where(kind < 0.4, rng.uniform(0.0, 0.05, n),
                      np.where(kind < 0.8, rng.uniform(0.95, 1.0, n), rng.uniform(0.0, 1.0, n)))
    buf = EvolvingBuffer(CurriculumConfig(capacity=n + 8, potential=potential, max_children=n))
    roots = buf.add_roots(np.arange(4))
    ids = buf.add_children(np.repeat(roots, n // 4), np.zeros(n), 2, hashes=np.arange(n))
    truth = dict(zip(ids.tolist(), p_true))
    sampler = LearnabilitySampler(seed)
    hits = total = 0
    for step in range(200):
        batch = sampler.sample(buf, k, step=step)
        p = np.array([truth.get(int(i), np.nan) for i in batch])
        kids = ~np.isnan(p)
        succ = rng.random((batch.size, g)) < np.nan_to_num(p, nan=0.3)[:, None]
        buf.record(batch, succ.astype(np.float64), succ, step)
        hits += np.count_nonzero((p[kids] > 0.2) & (p[kids] < 0.8))
        total += np.count_nonzero(kids)
    return hits / total


def test_frontier_spends_at_least_twice_uniforms_share_on_the_frontier():
    frontier, uniform = _simulate("frontier", 0), _simulate("uniform", 0)
    assert frontier >= 2 * uniform, (frontier, uniform)
