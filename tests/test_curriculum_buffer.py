"""EvolvingBuffer: recording, children rules, eviction, cool-down, invariants, checkpoints."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ace_jax.curriculum import (CurriculumConfig, EvolvingBuffer, LearnabilitySampler,
                                PayloadStore, content_hash, get_potential, load_state,
                                save_state)
from ace_jax.curriculum.synthetic import fill_synthetic

SETTINGS = settings(max_examples=20, deadline=None)


def _buffer(capacity=64, n_tasks=3, **cfg):
    buf = EvolvingBuffer(CurriculumConfig(capacity=capacity, **cfg))
    roots = buf.add_roots(np.arange(n_tasks), [{"spec": f"task {t}"} for t in range(n_tasks)])
    return buf, roots


def _kids(buf, parents, q, start=0):
    parents = np.asarray(parents)
    return buf.add_children(parents, q, "improve", hashes=np.arange(len(parents)) + 1000 + start)


# ---------------------------------------------------------------------------- invariants
def check_invariants(buf: EvolvingBuffer) -> None:
    """Everything derived from the arrays agrees with a recomputation from the arrays."""
    cfg, live = buf.config, buf.live_slots()
    assert buf.size == live.size <= buf.capacity
    assert np.all(buf.contains(buf.root_ids)) and np.all(buf.protected[buf.slots_of(buf.root_ids)])
    assert np.count_nonzero(buf.protected) == buf.root_ids.size
    lp = get_potential(cfg.potential)(buf.lp_inputs(live), cfg)
    np.testing.assert_array_equal(buf.lp[live], lp)
    cooling = buf.cool_until[live] >= 0
    eligible = ~cooling & ~buf.protected[live]
    counts = np.zeros(buf.capacity, np.int32)
    counts[live] = eligible
    np.testing.assert_array_equal(buf.tree.leaf_counts(), counts)
    w = np.zeros(buf.capacity)
    w[live[eligible]] = np.exp((lp[eligible] - get_potential(cfg.potential).bound(cfg)) / cfg.tau)
    np.testing.assert_allclose(buf.tree.leaf_weights(), w, rtol=1e-13)
    prio = np.full(buf.capacity, np.inf)
    prio[live] = np.where(buf.protected[live], np.inf, np.where(cooling, -1.0, lp))
    np.testing.assert_array_equal(buf.priority, prio)
    kids = live[~buf.protected[live]]
    np.testing.assert_array_equal(buf.index.find(buf.content_hash[kids]), kids)
    assert len(set(buf.content_hash[kids].tolist())) == kids.size
    parents = buf.slots_of(buf.parent_id[kids])
    n_children = np.bincount(parents[parents >= 0], minlength=buf.capacity)
    np.testing.assert_array_equal(buf.n_children, n_children)
    assert np.all(n_children <= cfg.max_children) and np.all(buf.depth[live] <= cfg.max_depth)
    free = buf._free[: buf._n_free]
    assert np.all(buf.entry_id[free] == -1) and np.unique(free).size == free.size


# ---------------------------------------------------------------------------- roots
def test_roots_are_protected_drafts_at_the_prior():
    buf, roots = _buffer(prior_a=2.0)
    f = buf.fields(roots)
    assert f["task_id"].tolist() == [0, 1, 2] and np.all(f["protected"])
    assert np.all(f["a"] == 2.0) and np.all(f["b"] == 1.0) and np.all(f["depth"] == 0)
    assert np.all(f["operator"] == 0) and np.all(f["parent_id"] == -1)
    assert buf.payload(roots[1]) == {"spec": "task 1"}
    assert buf.n_eligible == 0
    with pytest.raises(ValueError, match=r"already have a root: \[2\]"):
        buf.add_roots([2, 5])
    check_invariants(buf)


# ---------------------------------------------------------------------------- record
def _record_reference(state, ids, rewards, successes, step, cfg, live):
    """Apply groups one by one with plain Python numbers."""
    for i, r, s in zip(ids.tolist(), rewards, successes):
        if i not in live:
            continue
        e = state[i]
        g = len(r)
        e["a"] = cfg.discount * e["a"] + float(np.sum(s))
        e["b"] = cfg.discount * e["b"] + g - float(np.sum(s))
        mean = sum(r) / g
        std = (sum((x - mean) ** 2 for x in r) / (g - cfg.std_ddof)) ** 0.5
        if e["visits"] == 0:
            e["ema_mean"], e["ema_std"] = mean, std
        else:
            e["ema_mean"] = (1 - cfg.ema_rate) * e["ema_mean"] + cfg.ema_rate * mean
            e["ema_std"] = (1 - cfg.ema_rate) * e["ema_std"] + cfg.ema_rate * std
        e["visits"] += 1
        e["last_visit"] = step


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.sampled_from([0, 1]))
def test_record_updates_counts_emas_and_visits(seed, g, ddof):
    rng = np.random.default_rng(seed)
    buf, roots = _buffer(capacity=40, std_ddof=ddof, cooldown_groups=99)
    kids = _kids(buf, np.repeat(roots, 4), rng.random(12))
    cfg = buf.config
    live = set(buf.entry_id[buf.live_slots()].tolist())
    names = ["a", "b", "ema_mean", "ema_std", "visits", "last_visit"]
    state = {i: {n: float(v) for n, v in zip(names, vals)}
             for i, *vals in zip(kids, *(buf.fields(kids, names)[n] for n in names))}
    for step in range(3):
        ids = rng.choice(kids, 10)  # repeats: several groups for one state in one call
        ids = np.append(ids, [10**9, -1])  # stale / unknown ids are skipped
        succ = rng.random((ids.size, g)) < 0.5
        rewards = np.where(succ, rng.random(succ.shape), 0.0)
        assert buf.record(ids, rewards, succ, step) == 10
        _record_reference(state, ids, rewards, succ, step, cfg, live)
    got = buf.fields(kids, names)
    for j, i in enumerate(kids.tolist()):
        for n in names:
            assert got[n][j] == pytest.approx(state[i][n], rel=1e-6, abs=1e-6), n
    assert buf.counters["n_stale"] == 6
    check_invariants(buf)


def test_record_validates_its_inputs():
    buf, roots = _buffer()
    with pytest.raises(ValueError, match=r"\[k=3, G\]"):
        buf.record(roots, np.zeros((2, 4)), np.zeros((2, 4)), 0)
    with pytest.raises(ValueError, match="0/1"):
        buf.record(roots, np.zeros((3, 4)), np.full((3, 4), 2), 0)
    with pytest.raises(ValueError, match="finite"):
        buf.record(roots, np.full((3, 4), np.nan), np.zeros((3, 4)), 0)


# ---------------------------------------------------------------------------- children
def test_children_inherit_scaled_counts_and_depth():
    buf, roots = _buffer(capacity=64)
    buf.record(roots[:1], np.ones((1, 8)), np.ones((1, 8)), 0)  # a = 0.9 + 8, b = 0.9
    a0, b0 = 0.9 + 8, 0.9
    kid = _kids(buf, [roots[0]], [0.4])[0]
    f = buf.fields([kid])
    assert f["a"][0] == pytest.approx(2 * a0 / (a0 + b0))
    assert f["b"][0] == pytest.approx(2 * b0 / (a0 + b0))
    assert f["depth"][0] == 1 and f["parent_id"][0] == roots[0] and f["task_id"][0] == 0
    assert f["ema_mean"][0] == buf.fields(roots[:1])["ema_mean"][0] and f["visits"][0] == 0
    assert f["q"][0] == pytest.approx(0.4) and f["operator"][0] == 2
    # counts already below 2 pseudo-counts are inherited unchanged
    grandkid = _kids(buf, [roots[1]], [0.1], start=50)[0]
    assert buf.fields([grandkid])["a"][0] == 1.0 and buf.fields([grandkid])["b"][0] == 1.0
    check_invariants(buf)


def test_children_rules_dedupe_depth_and_limit_best_q_first():
    buf, roots = _buffer(capacity=64, max_children=2, max_depth=2)
    out = buf.add_children([roots[0]] * 4 + [roots[1]] * 2, [0.1, 0.9, 0.5, 0.7, 0.3, 0.3],
                           ["improve", "debug", "improve", "improve", "draft", "improve"],
                           hashes=[1, 2, 3, 4, 5, 5])
    # parent 0: best q first -> rows 1 (0.9) and 3 (0.7); parent 1: hash 5 twice -> one kept
    assert (out >= 0).tolist() == [False, True, False, True, True, False]
    assert buf.last_add_rejects == {"orphan": 0, "too_deep": 0, "duplicate": 1,
                                    "child_limit": 2, "no_room": 0}
    # a parent with live children only takes the rest of its limit; known hashes are dupes
    out2 = buf.add_children([roots[1]] * 3, [0.2, 0.8, 0.5], 2, hashes=[2, 6, 7])
    assert (out2 >= 0).tolist() == [False, True, False]
    # depth: child of a depth-2 entry is too deep
    d2 = buf.add_children([out[1]], [0.5], 2, hashes=[8])[0]
    assert buf.fields([d2])["depth"][0] == 2
    assert buf.add_children([d2], [0.5], 2, hashes=[9])[0] == -1
    assert buf.last_add_rejects["too_deep"] == 1
    assert buf.add_children([123456789], [0.5], 2, hashes=[10])[0] == -1
    assert buf.last_add_rejects["orphan"] == 1
    check_invariants(buf)


def test_children_hash_defaults_to_task_and_code_and_payloads_are_stored():
    buf, roots = _buffer()
    pay = [{"code": "print(1)", "feedback": "ok"}, {"code": "print(1)"}, {"code": "print(2)"}]
    out = buf.add_children([roots[0], roots[0], roots[1]], [0.5, 0.6, 0.5], 2, payloads=pay)
    assert out[0] == -1 and out[1] >= 0 and out[2] >= 0  # same task and code: best q kept
    assert buf.fields(out[1:])["content_hash"].tolist() == [content_hash(0, "print(1)"),
                                                          content_hash(1, "print(2)")]
    assert buf.payload(out[1]) == {"code": "print(1)"}
    with pytest.raises(ValueError, match="operator='fix' is not allowed"):
        buf.add_children([roots[0]], [0.5], "fix", hashes=[1])
    with pytest.raises(ValueError, match=r"q must be 1 values in \[0, 1\]"):
        buf.add_children([roots[0]], [1.5], 2, hashes=[1])


# ---------------------------------------------------------------------------- eviction
def test_eviction_takes_lowest_priority_then_oldest():
    rng = np.random.default_rng(0)
    buf, roots = _buffer(capacity=30, cooldown_groups=1, cooldown_base=100)
    kids = _kids(buf, np.repeat(roots, 4), rng.random(12))
    grand = _kids(buf, np.repeat(kids[:3], 4), rng.random(12), start=100)
    assert buf.size == 27
    # make some states distinct in LP; cool two of them (zero-variance group, 1 group enough)
    buf.record(kids[3:9], rng.random((6, 8)), rng.random((6, 8)) < 0.5, 1)
    buf.record(grand[:2], np.zeros((2, 8)), np.zeros((2, 8)), 1)
    live = buf.live_slots()
    cand = live[~buf.protected[live]]
    key = np.where(buf.cool_until[cand] >= 0, -1.0, buf.lp[cand])
    cand_ids = buf.entry_id[cand]
    expected = cand_ids[np.lexsort((cand_ids, key))]
    new = _kids(buf, np.repeat(grand[2:6], 2), np.full(8, 0.5), start=200)  # 3 free, 5 evicted
    gone = cand_ids[~buf.contains(cand_ids)]
    assert set(gone.tolist()) == set(expected[:5].tolist())
    assert np.all(new >= 0) and buf.size == 30 and buf.counters["n_evicted"] == 5
    check_invariants(buf)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(5, 40), st.integers(1, 6))
def test_random_operations_keep_every_invariant(seed, capacity, n_tasks):
    """Protected roots are never evicted, capacity is never exceeded, derived state agrees."""
    rng = np.random.default_rng(seed)
    n_tasks = min(n_tasks, capacity)
    buf = EvolvingBuffer(CurriculumConfig(capacity=capacity, max_depth=3, cooldown_base=2,
                                          cooldown_groups=2))
    roots = buf.add_roots(np.arange(n_tasks))
    sampler = LearnabilitySampler(seed)
    for step in range(12):
        ids = sampler.sample(buf, int(rng.integers(1, 10)), step=step)
        g = 4
        flat = rng.random(ids.size) < 0.4
        succ = (rng.random((ids.size, g)) < 0.5) & ~flat[:, None]
        rewards = np.where(succ, 1.0, 0.0)
        buf.record(ids, rewards, succ, step)
        parents = np.repeat(ids, g)
        out = buf.add_children(parents, rng.random(parents.size), 2,
                               hashes=rng.integers(0, 30, parents.size))
        assert np.all(buf.contains(out[out >= 0]))
        assert np.all(buf.contains(roots))
        check_invariants(buf)


def test_adding_with_only_roots_left_reports_no_room():
    buf, roots = _buffer(capacity=4, n_tasks=3)
    out = buf.add_children(np.repeat(roots, 2), [0.1, 0.2, 0.9, 0.3, 0.4, 0.5], 2,
                           hashes=np.arange(6))
    assert (out >= 0).sum() == 1 and out[2] >= 0  # one free slot: the best q
    assert buf.last_add_rejects["no_room"] == 5
    check_invariants(buf)


# ---------------------------------------------------------------------------- cool-down
@SETTINGS
@given(st.integers(0, 25), st.integers(1, 4), st.integers(0, 5))
def test_zero_variance_state_cools_down_for_the_spec_steps_and_comes_back(base, groups, start):
    buf, roots = _buffer(capacity=16, cooldown_base=base, cooldown_groups=groups)
    kid, other = _kids(buf, [roots[0], roots[1]], [0.3, 0.3])
    sampler = LearnabilitySampler(0, dense_below=0)
    step = start
    for level in range(3):
        for _ in range(groups):  # zero-variance groups (all fail); the last one starts it
            assert kid in sampler.probabilities(buf)[0]
            buf.record([kid], np.zeros((1, 8)), np.zeros((1, 8)), step)
            step += 1
        began = step - 1
        a, b = buf.fields([kid])["a"][0], buf.fields([kid])["b"][0]
        skipped = base * 2**level
        assert buf.fields([kid])["cool_level"][0] == level + 1
        for t in range(began + 1, began + skipped + 1):  # skipped for exactly this many steps
            ids = sampler.sample(buf, 3, step=t)
            assert kid not in ids and kid not in sampler.probabilities(buf)[0]
        buf.advance(began + skipped + 1)
        assert kid in sampler.probabilities(buf)[0]
        f = buf.fields([kid])
        assert (f["a"][0], f["b"][0]) == (a / 2, b / 2)  # re-enters with counts halved
        step = began + skipped + 1
    # a group with variance resets the level
    buf.record([kid], np.array([[0.0, 1.0]]), np.array([[0, 1]]), step)
    assert buf.fields([kid])["cool_level"][0] == 0
    check_invariants(buf)


def test_roots_never_cool_down():
    buf, roots = _buffer(cooldown_groups=1)
    buf.record(roots, np.zeros((3, 4)), np.zeros((3, 4)), 0)
    assert np.all(buf.fields(roots)["cool_until"] == -1)


# ---------------------------------------------------------------------------- checkpoints
def _assert_states_equal(x, y):
    assert x.keys() == y.keys()
    for k in x:
        if isinstance(x[k], dict):
            _assert_states_equal(x[k], y[k])
        elif isinstance(x[k], np.ndarray):
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k
        else:
            assert x[k] == y[k], k


def _drive(buf, sampler, rng, steps, start):
    """A few training-like steps; returns what they produced."""
    out = []
    for step in range(start, start + steps):
        ids = sampler.sample(buf, 12, step=step)
        succ = (rng.random((ids.size, 4)) < 0.5) & (rng.random((ids.size, 1)) < 0.5)
        buf.record(ids, succ * 1.0, succ, step)
        par = np.repeat(ids, 2)
        pay = [{"code": f"c{step}-{i}"} for i in range(par.size)]
        out.append(ids)
        out.append(buf.add_children(par, rng.random(par.size), 1, payloads=pay))
    return out


@pytest.mark.parametrize("disk, via_files", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_state_dict_round_trip_is_exact(tmp_path, disk, via_files):
    store = PayloadStore(tmp_path / "p.jsonl") if disk else PayloadStore()
    buf = EvolvingBuffer(CurriculumConfig(capacity=100, cooldown_base=3, cooldown_groups=1), store)
    buf.add_roots(np.arange(4), [{"spec": str(t)} for t in range(4)])
    sampler = LearnabilitySampler(7, dense_below=0)
    rng = np.random.default_rng(0)
    _drive(buf, sampler, rng, 6, 0)
    state, s_state = buf.state_dict(), sampler.state_dict()
    if via_files:
        save_state(tmp_path / "ckpt", buf, sampler)
    rng_state = rng.bit_generator.state
    assert buf.counters["n_evicted"] > 0 and (buf.cool_until >= 0).any()
    after = _drive(buf, sampler, rng, 5, 6)  # the original goes on (the payload file grows)
    final = buf.state_dict()
    buf.store.close()

    if via_files:
        buf2, sampler2 = load_state(tmp_path / "ckpt")
    else:
        buf2 = EvolvingBuffer.from_state_dict(state)
        sampler2 = LearnabilitySampler.from_state_dict(s_state)
    _assert_states_equal(buf2.state_dict(), state)
    assert sampler2.rng.bit_generator.state == s_state["rng"]
    if disk:
        assert (tmp_path / "p.jsonl").stat().st_size == state["payloads"]["nbytes"]
    rng.bit_generator.state = rng_state
    after2 = _drive(buf2, sampler2, rng, 5, 6)
    assert all(np.array_equal(x, y) for x, y in zip(after, after2))
    _assert_states_equal(buf2.state_dict(), final)
    for i in buf2.entry_id[buf2.live_slots()]:
        assert buf2.payload(i) == (None if buf2.fields([i])["payload_id"][0] < 0 else
                                   buf2.store.get(buf2.fields([i])["payload_id"][0]))
    check_invariants(buf2)


def test_restore_under_a_new_config_recomputes_lp():
    buf = EvolvingBuffer(CurriculumConfig(capacity=100))
    fill_synthetic(buf, 100, np.random.default_rng(0), n_tasks=4)
    new = CurriculumConfig(capacity=100, potential="p1mp", tau=0.5)
    buf2 = EvolvingBuffer.from_state_dict(buf.state_dict(), config=new)
    assert buf2.config == new
    check_invariants(buf2)
    with pytest.raises(ValueError, match="capacity=50 differs"):
        EvolvingBuffer.from_state_dict(buf.state_dict(), config=CurriculumConfig(capacity=50))
