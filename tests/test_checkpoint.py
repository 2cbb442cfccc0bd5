"""Train-state checkpoints: bit-identical sharded restore, extra payload, keep-N, async safety,
fallback from a corrupt newest step."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ace_jax.train.checkpoint import CheckpointFallbackWarning, TrainCheckpointer


def _mesh():
    return jax.make_mesh((4, 2), ("data", "fsdp"))


def _state(seed=0):
    mesh = _mesh()
    k = jax.random.split(jax.random.key(seed), 4)
    w = jax.random.normal(k[0], (8, 8), jnp.float32).at[0, 0].set(jnp.nan)
    return {
        "params": {
            "w": jax.device_put(w, NamedSharding(mesh, P("data", "fsdp"))),
            "emb": jax.device_put(jax.random.normal(k[1], (16, 4)).astype(jnp.bfloat16),
                                  NamedSharding(mesh, P("data"))),
        },
        "opt": {"mu": jax.random.normal(k[2], (8, 8)), "count": jnp.asarray(7, jnp.int32)},
        "step": jnp.asarray(seed + 100, jnp.int32),
        "rng": k[3],  # typed PRNG key
        "rng_data": jax.random.key_data(k[3]),
    }


def _extra(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "q": rng.random(10),
        "q_nan": np.array([np.nan, -np.inf, 0.5]),
        "ids": rng.integers(-5, 5, 7).astype(np.int8),
        "counts": rng.random((3, 2)).astype(np.float32),
        "protected": rng.random(10) > 0.5,
        "empty": np.zeros((0, 4), np.uint16),
        "scalar": np.array(3.25),
        "names": np.array(["a", "bcd"]),
    }
    meta = {"sampler": {"seed": seed, "tau": 0.25}, "tasks": ["t1", "t2"], "note": None}
    return arrays, meta


def _bits(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x).tobytes(), np.asarray(x).dtype, np.asarray(x).shape


def _assert_trees_identical(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        assert _bits(x) == _bits(y)


def _assert_extra_identical(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


def test_save_restore_bit_identical_with_target_shardings(tmp_path):
    state = _state()
    arrays, meta = _extra()
    with TrainCheckpointer(tmp_path / "ckpt") as ck:
        ck.save(1, state, arrays=arrays, meta=meta)
    mesh = _mesh()
    # an abstract target with other shardings than at save time
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
    target["params"]["w"] = jax.ShapeDtypeStruct((8, 8), jnp.float32,
                                                 sharding=NamedSharding(mesh, P("fsdp", "data")))
    target["opt"]["mu"] = jax.ShapeDtypeStruct((8, 8), jnp.float32,
                                               sharding=NamedSharding(mesh, P(None, "fsdp")))
    with TrainCheckpointer(tmp_path / "ckpt", create=False) as ck:
        r = ck.restore(target)
        assert r.step == 1
        _assert_trees_identical(r.state, state)
        for got, want in zip(jax.tree.leaves(r.state), jax.tree.leaves(target)):
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
        _assert_extra_identical(r.arrays, arrays)
        assert r.meta == meta
        # no target: restored as saved
        _assert_trees_identical(ck.restore().state, state)


def test_async_save_survives_deleted_arrays_and_mutated_payload(tmp_path):
    state, (arrays, meta) = _state(1), _extra(1)
    want_state = jax.tree.map(lambda x: x.copy(), state)
    want_arrays = {k: v.copy() for k, v in arrays.items()}
    ck = TrainCheckpointer(tmp_path / "c", async_save=True)
    ck.save(5, state, arrays=arrays, meta=meta)
    for leaf in jax.tree.leaves(state):  # as if donated to the next train step
        leaf.delete()
    arrays["q"][:] = -1.0
    meta["tasks"].append("t3")
    ck.close()
    with TrainCheckpointer(tmp_path / "c") as ck2:
        r = ck2.restore()
    _assert_trees_identical(r.state, want_state)
    _assert_extra_identical(r.arrays, want_arrays)
    assert r.meta["tasks"] == ["t1", "t2"]


def test_keep_last_n(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be an integer >= 2"):
        TrainCheckpointer(tmp_path / "x", max_to_keep=1)
    small = {"w": jnp.arange(4.0)}
    with TrainCheckpointer(tmp_path / "k", max_to_keep=2) as ck:
        for step in range(1, 6):
            ck.save(step, jax.tree.map(lambda x: x + step, small), meta={"step": step})
        ck.wait()
        assert ck.all_steps() == [4, 5] and ck.latest_step() == 5
        assert sorted(os.listdir(tmp_path / "k")) == ["4", "5"]
        r = ck.restore(step=4)
        np.testing.assert_array_equal(r.state["w"], np.arange(4.0) + 4)
        assert r.meta == {"step": 4}
        with pytest.raises(ValueError, match="latest saved step is 5"):
            ck.save(5, small)


def _largest_file(path):
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate_state", "delete_payload"])
def test_corrupt_newest_falls_back_and_is_moved_aside(tmp_path, damage):
    d = tmp_path / "run"
    states = {s: _state(s) for s in (1, 2, 3)}
    with TrainCheckpointer(d, max_to_keep=3) as ck:
        for s in (1, 2, 3):
            ck.save(s, states[s], arrays={"s": np.array([s])}, meta={"s": s})
    if damage == "truncate_state":
        victim = _largest_file(d / "3" / "state")
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
    else:
        os.remove(d / "3" / "extra" / "arrays.npz")

    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          states[1])
    with TrainCheckpointer(d) as ck:
        assert ck.latest_step() == 3  # orbax still names the bad step
        with pytest.warns(CheckpointFallbackWarning, match=r"step 3 .*restored step 2"):
            r = ck.restore(target)
        assert r.step == 2 and r.meta == {"s": 2}
        _assert_trees_identical(r.state, states[2])
        names = sorted(os.listdir(d))
        assert "3" not in names and any(n.startswith("3.corrupt-") for n in names)
        assert ck.all_steps() == [1, 2]
        # the next save of step 3 does not collide, and it is what restores next
        ck.save(3, states[1], meta={"s": "new3"})
        ck.wait()
        r = ck.restore(target)
        assert r.step == 3 and r.meta == {"s": "new3"}
        _assert_trees_identical(r.state, states[1])


def test_shared_failure_moves_nothing_and_missing_dirs_are_clear(tmp_path):
    d = tmp_path / "run"
    with TrainCheckpointer(d) as ck:
        ck.save(1, {"w": jnp.ones(3)})
        ck.save(2, {"w": jnp.ones(3)})
        with pytest.raises(RuntimeError, match="no checkpoint in .* could be restored"):
            ck.restore({"w": jax.ShapeDtypeStruct((5,), jnp.float32)})  # wrong target shape
        assert ck.all_steps() == [1, 2] and sorted(os.listdir(d)) == ["1", "2"]
        with pytest.raises(FileNotFoundError, match="step 7 not found"):
            ck.restore(step=7)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainCheckpointer(tmp_path / "missing", create=False)
    with TrainCheckpointer(tmp_path / "empty") as ck:
        with pytest.raises(FileNotFoundError, match="no checkpoint found in .*empty"):
            ck.restore()


def test_bad_payload_is_rejected_before_writing(tmp_path):
    with TrainCheckpointer(tmp_path / "p") as ck:
        with pytest.raises(ValueError, match=r"arrays\['x'\] must be a NumPy array"):
            ck.save(1, {"w": jnp.ones(2)}, arrays={"x": [1, 2]})
        with pytest.raises(ValueError, match="dtype object"):
            ck.save(1, {"w": jnp.ones(2)}, arrays={"x": np.array([{}, 1], dtype=object)})
        with pytest.raises(ValueError, match="not JSON-serializable"):
            ck.save(1, {"w": jnp.ones(2)}, meta={"x": np.float32(1)})
        with pytest.raises(ValueError, match="round-trip"):
            ck.save(1, {"w": jnp.ones(2)}, meta={"x": (1, 2)})
        assert ck.all_steps() == []
