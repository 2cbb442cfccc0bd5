"""The curriculum's building blocks: sum tree, hash index, eviction pick, expiry queue, payloads."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ace_jax.curriculum import PayloadStore
from ace_jax.curriculum.cooldown import ExpiryQueue
from ace_jax.curriculum.evict import lowest
from ace_jax.curriculum.hashindex import HashIndex
from ace_jax.curriculum.sumtree import SumTree

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_sumtree_updates_equal_a_fresh_build(capacity, seed):
    rng = np.random.default_rng(seed)
    tree = SumTree(capacity)
    w, c = np.zeros(capacity), np.zeros(capacity, np.int32)
    for _ in range(5):
        slots = rng.choice(capacity, rng.integers(1, capacity + 1), replace=False)
        w[slots] = rng.random(slots.size) * (rng.random(slots.size) < 0.8)
        c[slots] = rng.random(slots.size) < 0.7
        tree.update(slots, w[slots], c[slots])
    fresh = SumTree(capacity)
    fresh.w[fresh.size : fresh.size + capacity] = w
    fresh.c[fresh.size : fresh.size + capacity] = c
    fresh.rebuild()
    assert np.array_equal(tree.w, fresh.w) and np.array_equal(tree.c, fresh.c)
    assert tree.total_weight == pytest.approx(w.sum(), rel=1e-12, abs=1e-12)
    assert tree.total_count == c.sum()


@SETTINGS
@given(st.integers(1, 200), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_sumtree_sample_is_the_inverse_cdf(capacity, eps, seed):
    rng = np.random.default_rng(seed)
    tree = SumTree(capacity)
    w = rng.random(capacity) * (rng.random(capacity) < 0.7)
    c = (w > 0).astype(np.int32)
    if c.sum() == 0:
        w[0], c[0] = 0.5, 1
    tree.update(np.arange(capacity), w, c)
    alpha, beta = (1 - eps) / w.sum(), eps / c.sum()
    mass = alpha * w + beta * c
    cdf = np.cumsum(mass)
    u = rng.random(2000)
    got = tree.sample(u, alpha, beta)
    want = np.minimum(np.searchsorted(cdf, u, side="right"), capacity - 1)
    near_edge = np.min(np.abs(u[:, None] - cdf[None, :]), axis=1) < 1e-9
    assert np.all(mass[got] > 0)
    assert np.array_equal(got[~near_edge], want[~near_edge])


def test_sumtree_rejects_repeated_slots():
    with pytest.raises(ValueError, match="distinct"):
        SumTree(8).update(np.array([1, 1]), 1.0, 1)


@SETTINGS
@given(st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_hash_index_matches_a_dict(capacity, seed):
    rng = np.random.default_rng(seed)
    keys = np.zeros(capacity, np.uint64)
    index = HashIndex(capacity, keys)
    ref: dict[int, int] = {}
    free = list(range(capacity))
    for _ in range(40):
        if free and rng.random() < 0.6:  # insert new keys (some small, some huge)
            n = int(rng.integers(1, len(free) + 1))
            slots = np.array([free.pop() for _ in range(n)])
            new = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
            if rng.random() < 0.5:
                new = rng.integers(0, 50, n).astype(np.uint64)
            new = np.array([k for k in dict.fromkeys(new.tolist()) if k not in ref], np.uint64)
            free.extend(slots[new.size :].tolist())
            slots = slots[: new.size]
            keys[slots] = new
            index.insert(new, slots)
            ref.update(zip(new.tolist(), slots.tolist()))
        elif ref:  # delete some
            present = np.array(list(ref), np.uint64)
            gone = present[rng.permutation(present.size)[: rng.integers(1, present.size + 1)]]
            index.delete(gone, np.array([ref[int(k)] for k in gone]))
            for k in gone.tolist():
                free.append(ref.pop(k))
        probe = np.concatenate([np.array(list(ref), np.uint64),
                                rng.integers(0, 2**63, 20, dtype=np.uint64)])
        want = np.array([ref.get(int(k), -1) for k in probe])
        assert np.array_equal(index.find(probe), want)
    assert np.count_nonzero(index.table >= 0) == len(ref)


def _lowest_reference(priority, ids, m):
    ok = np.flatnonzero(np.isfinite(priority))
    order = ok[np.lexsort((ids[ok], priority[ok]))]
    return np.sort(order[:m])


@SETTINGS
@given(st.sampled_from([50, 5000, 200_000]), st.integers(0, 3000), st.integers(0, 2**32 - 1),
       st.booleans())
def test_lowest_picks_lowest_priority_then_oldest(n, m, seed, coarse):
    rng = np.random.default_rng(seed)
    priority = rng.random(n)
    if coarse:  # many ties
        priority = np.round(priority * 3) / 3
    priority[rng.random(n) < 0.2] = -1.0  # cooling
    priority[rng.random(n) < 0.1] = np.inf  # protected / free
    ids = rng.permutation(n).astype(np.int64) * 7 + 3
    got = lowest(priority, ids, m)
    assert np.array_equal(got, _lowest_reference(priority, ids, m))


def test_lowest_with_one_huge_tie():
    n = 100_000
    priority = np.ones(n)
    ids = np.arange(n)[::-1].copy()
    assert np.array_equal(lowest(priority, ids, 10), np.arange(n - 10, n))


def test_expiry_queue_pops_in_time():
    q = ExpiryQueue()
    q.push(np.array([5, 3, 5]), np.array([10, 11, 12]))
    q.push(np.array([9]), np.array([13]))
    assert q.pop_due(3).size == 0
    assert sorted(q.pop_due(6).tolist()) == [10, 11, 12]
    assert len(q) == 1
    assert q.pop_due(100).tolist() == [13]


def test_payload_store_memory_round_trip():
    store = PayloadStore()
    ids = store.put_many([{"code": "a", "feedback": "x"}, {"code": "b"}])
    assert ids.tolist() == [0, 1]
    assert store.get(1) == {"code": "b"}
    store.discard([0])
    assert 0 not in store and 1 in store
    with pytest.raises(KeyError, match="discarded"):
        store.get(0)
    with pytest.raises(TypeError, match="must be a dict"):
        store.put(["code", "x"])
    restored = PayloadStore.from_state_dict(store.state_dict())
    assert restored.state_dict()["payloads"] == store.state_dict()["payloads"]
    assert restored.put({"code": "c"}) == store.put({"code": "c"}) == 2
    store.put({"code": 3})  # strings are checked by state_dict, off the hot path
    with pytest.raises(TypeError, match="payload 3: key 'code' must map a str to a str"):
        store.state_dict()


def test_payload_store_disk_truncates_to_checkpoint(tmp_path):
    path = tmp_path / "payloads.jsonl"
    store = PayloadStore(path)
    store.put_many([{"code": f"print({i})", "feedback": "é ok"} for i in range(5)])
    state = store.state_dict()
    store.put_many([{"code": "after the checkpoint"}] * 3)
    assert len(store) == 8
    store.close()
    restored = PayloadStore.from_state_dict(state)
    assert path.stat().st_size == state["nbytes"] and len(restored) == 5
    assert restored.get(4) == {"code": "print(4)", "feedback": "é ok"}
    assert restored.put({"code": "new"}) == 5
    restored.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["code"] for x in lines][-2:] == ["print(4)", "new"]
    with pytest.raises(FileExistsError):
        PayloadStore(path)
    with pytest.raises(TypeError, match="payload 5: key 'n'"):
        PayloadStore.from_state_dict(state).put({"n": 1})


def test_payload_store_rejects_a_shortened_file(tmp_path):
    store = PayloadStore(tmp_path / "p.jsonl")
    store.put({"code": "x" * 100})
    state = store.state_dict()
    store.close()
    (tmp_path / "p.jsonl").write_text("")
    with pytest.raises(ValueError, match="truncated or replaced"):
        PayloadStore.from_state_dict(state)
