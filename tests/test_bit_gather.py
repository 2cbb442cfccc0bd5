"""bf16 gathers moved as integers (sharding.bit_gather): equal to the float collectives in values
and gradients, and a sharded bf16 step whose compiled HLO has no widened all-gather left."""

import dataclasses

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
    """expert-as-data on 2 x 4 fake devices, bf16 compute: every all-gather moves integers or real
    fp32 data (none is bf16 widened to f32 by the CPU compiler); the loss and gradients equal the
    same sharded step with the compiler's own gathers, and the single device within bf16 rounding."""
    cfg = get_config("tiny-moe", compute_dtype="bfloat16")
    mesh_cfg = load_mesh_config({"base": "expert_as_data", "mesh": {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}})
    mesh = build_mesh(mesh_cfg)
    graphdef, params = nnx.split(Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(1), (8, 16), 3, cfg.vocab_size)

    def loss(p, ids):   # next-token cross-entropy
        logits = nnx.merge(graphdef, p).forward(ids).logits[:, :-1]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], axis=-1))

    ref_value, ref_grads = jax.jit(jax.value_and_grad(loss))(params, ids)
    sharded = jax.device_put(params, state_shardings(params, mesh, mesh_cfg.rules))
    hooks = hooks_for(mesh_cfg, mesh)
    runs = {}
    for name, h in (("bits", hooks), ("compiler", dataclasses.replace(hooks, gather_weight=None))):
        with jax.set_mesh(mesh), use(h):
            fresh = jax.jit(jax.value_and_grad(loss))
            runs[name] = (fresh.lower(sharded, ids).compile().as_text(), *fresh(sharded, ids))
    hlo, value, grads = runs["bits"]
    gathers = [c for c in mesh_collectives(hlo, mesh) if c.kind == "all-gather" and c.group_size > 1]
    assert gathers and not [c for c in gathers if c.widened], "a bf16 all-gather was widened to f32"
    assert [c for c in mesh_collectives(runs["compiler"][0], mesh) if c.kind == "all-gather" and c.widened]
    assert float(value) == float(runs["compiler"][1])
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-2)
    for g, c, r in zip(jax.tree.leaves(grads), jax.tree.leaves(runs["compiler"][2]), jax.tree.leaves(ref_grads)):
        g, c, r = (np.asarray(a, np.float32) for a in (g, c, r))
        np.testing.assert_allclose(g, c, rtol=1e-6, atol=1e-7)
        assert np.linalg.norm(g - r) <= 0.15 * np.linalg.norm(r) + 1e-7   # bf16 partial sums: a few %
