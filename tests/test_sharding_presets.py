"""Every rule preset on 8 fake CPU devices: sharded init lays each parameter out as the rules say,
and the sharded forward logits and gradients equal the single-device ones (tiny MoE, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.models.constraints import use
from sharding.context import hooks_for
from sharding.init import abstract_state, sharded_init
from sharding.planner import shard_bytes
from sharding.mesh import build_mesh, load_mesh_config
from sharding.rules import shard_batch, sharding_mismatches, state_shardings, state_specs

CFG = get_config("tiny-moe")
B, T = 8, 16
TOL = 1e-5


def init_fn():
    return nnx.split(Qwen3ForCausalLM(CFG, rngs=nnx.Rngs(0)))[1]


def data():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, CFG.vocab_size, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 11:] = 0
    mask[5, 6:] = 0
    return ids, mask


def loss_and_logits(graphdef):
    def fn(params, ids, mask):
        logits = nnx.merge(graphdef, params)(ids, mask)
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        w = mask[:, 1:].astype(jnp.float32)
        return jnp.sum(nll * w) / jnp.sum(w), logits
    return jax.value_and_grad(fn, has_aux=True)


@pytest.fixture(scope="module")
def reference():
    graphdef, params = nnx.split(Qwen3ForCausalLM(CFG, rngs=nnx.Rngs(0)))
    ids, mask = data()
    (loss, logits), grads = jax.jit(loss_and_logits(graphdef))(params, ids, mask)
    return graphdef, params, np.asarray(loss), np.asarray(logits), jax.tree.map(np.asarray, grads)


PRESETS = [("fsdp", None), ("fsdp_ep", None), ("fsdp_tp", None), ("expert_as_data", None),
           # 2 KV heads over tensor=4: replicated by rule, 4 query heads sharded
           ("fsdp_tp", {"fsdp": 2, "tensor": 4})]


@pytest.mark.parametrize("preset, mesh_override", PRESETS, ids=[p if not o else f"{p}-tensor4" for p, o in PRESETS])
def test_sharded_equals_single_device(reference, preset, mesh_override):
    graphdef, ref_params, ref_loss, ref_logits, ref_grads = reference
    cfg = load_mesh_config({"base": preset, "mesh": mesh_override} if mesh_override else preset)
    mesh = build_mesh(cfg)
    assert mesh.size == 8

    # exactly the reference values, placed with the rules' shardings (sharded init: test below)
    params = jax.device_put(ref_params, state_shardings(ref_params, mesh, cfg.rules))
    assert sharding_mismatches(params, mesh, cfg.rules) == []
    specs = state_specs(params, mesh, cfg.rules)
    if mesh_override:
        assert specs["['runs'][0]['k_proj']"][1] == jax.sharding.PartitionSpec(None, "fsdp")
        assert specs["['runs'][0]['q_proj']"][1] == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    if cfg.expert_parallel != "none":
        assert specs["['runs'][0]['gate_proj']"][1][1] == "expert"

    ids, mask = shard_batch(data(), mesh, cfg.rules)
    hooks = hooks_for(cfg, mesh)
    step = jax.jit(loss_and_logits(graphdef))
    with jax.set_mesh(mesh), use(hooks):
        if cfg.expert_parallel != "none":
            assert "shard_map" in str(jax.make_jaxpr(step)(params, ids, mask))
        (loss, logits), grads = step(params, ids, mask)

    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(loss), ref_loss, atol=TOL, rtol=TOL)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, g), r in zip(flat, jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), r, atol=TOL, rtol=TOL, err_msg=jax.tree_util.keystr(path))


def test_sharded_init_creates_each_shard_in_place(reference):
    """Init under jit with out_shardings: laid out by the rules from the start, values as eager init."""
    _, ref_params, *_ = reference
    cfg = load_mesh_config("expert_as_data")
    mesh = build_mesh(cfg)
    params = sharded_init(init_fn, mesh, cfg.rules)
    assert sharding_mismatches(params, mesh, cfg.rules) == []
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    # per device, the compiled init writes only its shards and never holds the whole state
    abstract = abstract_state(init_fn, mesh, cfg.rules)
    stats = jax.jit(init_fn, out_shardings=state_shardings(abstract, mesh, cfg.rules)).lower().compile().memory_analysis()
    full = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    n = len(jax.tree.leaves(abstract))   # XLA adds the output tuple's pointer table (8 B a leaf)
    assert shard_bytes(abstract) <= stats.output_size_in_bytes <= shard_bytes(abstract) + 8 * n
    assert shard_bytes(abstract) < full / 4
    assert stats.temp_size_in_bytes < full / 2
