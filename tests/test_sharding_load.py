"""Sharded HF load (`hf.load(dir, mesh=, rules=)`) equals the unsharded load, laid out by the rules."""

import jax
import numpy as np
import pytest
from flax import nnx

from ace_jax.checkpoint import hf
from ace_jax.models import get_config
from ace_jax.models.constraints import use
from helpers.hf_models import random_hf_model
from sharding.context import hooks_for
from sharding.mesh import build_mesh, load_mesh_config
from sharding.rules import shard_batch, sharding_mismatches


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tiny-moe"
    random_hf_model(get_config("tiny-moe"), seed=5).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def unsharded(hf_dir):
    return hf.load(hf_dir, dtype="float32")


@pytest.mark.parametrize("preset, override", [("expert_as_data", None), ("fsdp_tp", {"fsdp": 2, "tensor": 4})])
def test_sharded_load_params_equal_and_placed_by_rules(hf_dir, unsharded, preset, override):
    cfg = load_mesh_config({"base": preset, "mesh": override} if override else preset)
    mesh = build_mesh(cfg)
    model = hf.load(hf_dir, dtype="float32", mesh=mesh, rules=cfg.rules)
    state, ref = nnx.state(model, nnx.Param), nnx.state(unsharded, nnx.Param)
    assert sharding_mismatches(state, mesh, cfg.rules) == []
    sharded_somewhere = 0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for shard in a.addressable_shards:   # each device holds exactly its slice
            assert shard.data.shape == a.sharding.shard_shape(a.shape)
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(b)[shard.index])
        sharded_somewhere += not a.sharding.is_fully_replicated
    assert sharded_somewhere > 10


def test_sharded_load_logits_equal_unsharded(hf_dir, unsharded):
    cfg = load_mesh_config("expert_as_data")
    mesh = build_mesh(cfg)
    model = hf.load(hf_dir, dtype="float32", mesh=mesh, rules=cfg.rules)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 512, (8, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[3, 7:] = 0
    ref = np.asarray(jax.jit(lambda m, i, a: m(i, a))(unsharded, ids, mask))
    sids, smask = shard_batch((ids, mask), mesh, cfg.rules)
    with jax.set_mesh(mesh), use(hooks_for(cfg, mesh)):
        out = jax.jit(lambda m, i, a: m(i, a))(model, sids, smask)
    assert out.sharding.spec[0] == ("fsdp", "expert")   # logits stay batch-sharded
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)
