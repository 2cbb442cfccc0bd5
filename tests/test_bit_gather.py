"""bf16 gathers moved as integers (sharding.bit_gather): equal to the float collectives in values
and gradients, and a sharded bf16 step whose compiled HLO has no widened all-gather left."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.models.constraints import use
from sharding import bit_gather
from sharding.collectives import mesh_collectives
from sharding.context import hooks_for
from sharding.mesh import build_mesh, load_mesh_config
from sharding.rules import state_shardings


def _exchange(gather, scatter):
    """x [64, 4] sharded over 8 devices: gathered, scaled, reduce-scattered back (shard_map)."""
    mesh = Mesh(np.array(jax.devices()[:8]), ("x",))

    def body(x):
        y = gather(x) * jnp.arange(1, 65, dtype=x.dtype)[:, None]
        return scatter(y * y)

    run = jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    return jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(run(x)).astype(jnp.float32))))


def test_bit_collectives_equal_the_float_collectives_with_gradients():
    x = (0.1 * jax.random.normal(jax.random.key(0), (64, 4))).astype(jnp.bfloat16)
    bits = _exchange(lambda v: bit_gather.all_gather(v, ("x",)), lambda v: bit_gather.psum_scatter(v, ("x",)))
    plain = _exchange(lambda v: jax.lax.all_gather(v, "x", axis=0, tiled=True),
                      lambda v: jax.lax.psum_scatter(v, "x", scatter_dimension=0, tiled=True))
    (value, grad), (ref_value, ref_grad) = bits(x), plain(x)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-2)
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(ref_grad, np.float32), rtol=2e-2, atol=1e-3)
    hlo = bits.lower(x).compile().as_text()
    assert "u16[" in hlo and "all-gather(" in hlo


def test_sharded_bf16_step_gathers_weights_and_tokens_as_integers():
    """expert-as-data on 2 x 4 fake devices, bf16 compute: every all-gather moves integers (none is
    bf16 widened to f32 by the CPU compiler), and loss and gradients match the single device."""
    cfg = get_config("tiny-moe", compute_dtype="bfloat16")
    mesh_cfg = load_mesh_config({"base": "expert_as_data", "mesh": {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}})
    mesh = build_mesh(mesh_cfg)
    graphdef, params = nnx.split(Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(1), (8, 16), 3, cfg.vocab_size)

    def loss(p, ids):
        out = nnx.merge(graphdef, p).forward(ids, compute_logits=False)
        return jnp.mean(jnp.square(out.hidden.astype(jnp.float32)))

    step = jax.jit(jax.value_and_grad(loss))
    ref_value, ref_grads = step(params, ids)
    sharded = jax.device_put(params, state_shardings(params, mesh, mesh_cfg.rules))
    with jax.set_mesh(mesh), use(hooks_for(mesh_cfg, mesh)):
        fresh = jax.jit(jax.value_and_grad(loss))
        compiled = fresh.lower(sharded, ids).compile()
        value, grads = fresh(sharded, ids)
    gathers = [c for c in mesh_collectives(compiled.as_text(), mesh) if c.kind == "all-gather" and c.group_size > 1]
    assert gathers and not [c for c in gathers if c.widened], "a bf16 all-gather was widened to f32"
    assert "u16[" in compiled.as_text()
    np.testing.assert_allclose(float(value), float(ref_value), rtol=2e-2)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=0.1,
                                   atol=0.05 * float(np.max(np.abs(r))) + 1e-6)
