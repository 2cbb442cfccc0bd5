"""The persistent execution cache: content keys, sharing across instances and processes,
the size bound, and the training loop's `cache.run(pool, items)` convention (real bwrap)."""

import multiprocessing
import os

import pytest

from ace_jax.train.exec_cache import PersistentExecutionCache
from rollout.env.prepare import ensure_tasks
from rollout.exec_cache import CachingSandbox, ExecutionStore, execution_key
from rollout.sandbox.base import ExecResult, Limits
from rollout.sandbox.pool import WorkerPool
from rollout.sandbox.select import make_sandbox

SCRIPT = """
import pandas as pd, random
x = pd.read_csv("data/train.csv")
print("rows", len(x), "draw", random.Random(0).random())
pd.DataFrame({"id": x["id"], "y": x["x"] * 2}).to_csv("submission.csv", index=False)
"""


@pytest.fixture(scope="module")
def sandbox():
    with make_sandbox("bwrap") as sb:
        yield sb


def _data(tmp_path, name, rows):
    d = tmp_path / name
    d.mkdir()
    d.chmod(0o755)
    (d / "train.csv").write_text("id,x\n" + "".join(f"{i},{i / 2}\n" for i in range(rows)))
    return d


def test_a_repeated_execution_is_answered_from_the_store_across_instances(tmp_path, sandbox):
    data, other = _data(tmp_path, "a", 3), _data(tmp_path, "b", 4)
    first = CachingSandbox(sandbox, ExecutionStore(tmp_path / "cache"))
    ran = first.run(SCRIPT, data, Limits(timeout_s=30))
    assert ran.ok and b"2.0" in ran.submission and first.misses == 1
    again = first.run(SCRIPT, data, Limits(timeout_s=30))
    assert first.hits == 1 and again.submission == ran.submission and again.stdout_tail == ran.stdout_tail
    # Another run (a new store object on the same directory) shares it ...
    second = CachingSandbox(sandbox, ExecutionStore(tmp_path / "cache"))
    assert second.run(SCRIPT, data, Limits(timeout_s=30)).submission == ran.submission and second.hits == 1
    # ... and the key covers the data, the script and the limits.
    second.run(SCRIPT, other, Limits(timeout_s=30))
    second.run(SCRIPT + "\n", data, Limits(timeout_s=30))
    second.run(SCRIPT, data, Limits(timeout_s=31))
    assert second.misses == 3 and len(second.store) == 4


def test_keys_name_the_backend_class(tmp_path, sandbox):
    data = _data(tmp_path, "a", 2)
    with make_sandbox("subprocess", force_unisolated=True) as other:
        assert execution_key(data, SCRIPT, Limits(), sandbox) != execution_key(data, SCRIPT, Limits(), other)
    assert execution_key(data, SCRIPT, Limits(), sandbox) == execution_key(data, SCRIPT, Limits(), sandbox)


def _result(i):
    return ExecResult("bwrap", 0, False, 0.1, stdout_tail=f"out {i}", submission=b"x" * 1000)


def test_the_store_stays_under_its_size_bound_dropping_the_least_recently_used(tmp_path):
    store = ExecutionStore(tmp_path, max_bytes=20_000)
    for i in range(40):
        store.put(f"k{i}", _result(i))
        if i == 5:
            assert store.get("k0", Limits()) is not None   # k0 used again: kept longer
    assert store.total_bytes() <= 20_000 and 10 <= len(store) < 40
    assert store.get("k39", Limits()).stdout_tail == "out 39"
    assert store.get("k1", Limits()) is None
    with pytest.raises(ValueError, match="max_bytes"):
        ExecutionStore(tmp_path, max_bytes=0)


def _writer(directory, worker):
    store = ExecutionStore(directory, max_bytes=1 << 30)
    for i in range(60):
        store.put(f"w{worker}-{i}", _result(i))
        assert store.get(f"w{worker}-{i}", Limits()).stdout_tail == f"out {i}"
        store.get(f"w{1 - worker}-{i}", Limits())


def test_several_processes_share_one_store(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, w)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(ExecutionStore(tmp_path)) == 120


def test_the_loop_convention_runs_identical_scripts_once_across_caches(tmp_path, sandbox):
    task = ensure_tasks()["iris"]
    limits = Limits(timeout_s=60)
    items = [(task, "model=logreg C=1.0", "spec", False, limits, 0.0),
             (task, "model=logreg C=1.0", "spec", False, limits, 0.0),
             (task, "model=tree max_depth=2", "spec", False, limits, 0.5)]
    with WorkerPool(sandbox, 2) as pool:
        first = PersistentExecutionCache(tmp_path / "cache")
        a = first.run(pool, items)
        assert (first.hits, first.misses) == (1, 2)
        second = PersistentExecutionCache(tmp_path / "cache")
        b = second.run(pool, items[::-1])
        assert (second.hits, second.misses) == (3, 0) and second.stats()["exec_cache_hit_rate"] == 1.0
    assert [r.q for r in a] == [r.q for r in b[::-1]] and a[0].valid and a[2].valid
    assert [r.reward.reward for r in a] == [r.reward.reward for r in b[::-1]]
    assert os.path.isfile(tmp_path / "cache" / "executions.sqlite")
