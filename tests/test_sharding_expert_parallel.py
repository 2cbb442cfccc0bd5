"""Expert-parallel MoE block (shard_map over `expert`) equals the single-device block, values and
gradients, for both schemes, both local computations, and tokens sharded or replicated over experts."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ace_jax.models.constraints import use
from ace_jax.models.moe import moe_block
from sharding.context import model_hooks
from sharding.expert_parallel import expert_axes, local_expert_ffn
from sharding.mesh import build_mesh, load_mesh_config

N, H, E, I, K = 64, 16, 8, 12, 2
RING = {"batch": ["data", "fsdp", "expert"], "embed": "fsdp", "experts": "expert"}   # tokens over expert too
REPLICATED = {"batch": ["data", "fsdp"], "embed": "fsdp", "experts": "expert"}      # tokens replicated over it


def inputs(num_experts=E):
    k = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(k[0], (N, H))
    router = 2.0 * jax.random.normal(k[1], (H, num_experts))
    gate, up = (0.3 * jax.random.normal(k[i], (num_experts, H, I)) for i in (2, 3))
    down = 0.3 * jax.random.normal(k[4], (num_experts, I, H))
    mask = (jax.random.uniform(k[5], (N,)) > 0.2).astype(jnp.int32)
    return x, router, gate, up, down, mask


def value_and_grads(backend):
    def loss(x, router, gate, up, down, mask):
        y, ids, stats = moe_block(x, router, gate, up, down, top_k=K, norm_topk_prob=True, backend=backend,
                                  token_mask=mask)
        return jnp.sum(jnp.sin(y) * mask[:, None]) + stats.aux_loss, (y, ids, stats.expert_load)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True))


@functools.cache
def reference(backend, num_experts=E):
    return value_and_grads("ragged" if backend == "gmm" else backend)(*inputs(num_experts))


def compare(out, ref):
    (loss, (y, ids, load)), grads = out
    (rloss, (ry, rids, rload)), rgrads = ref
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(rids))
    np.testing.assert_array_equal(np.asarray(load), np.asarray(rload))
    np.testing.assert_allclose(np.asarray(y), np.asarray(ry), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(rloss), rtol=1e-5)
    for name, g, r in zip(("x", "router", "gate", "up", "down"), grads, rgrads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-5, rtol=1e-5, err_msg=name)


CASES = [("ring", "ragged", RING), ("ring", "dense", RING), ("all_to_all", "ragged", RING),
         ("ring", "ragged", REPLICATED), ("ring", "dense", REPLICATED), ("ring", "gmm", RING),
         ("ring", "gmm", REPLICATED), ("all_to_all", "gmm", RING)]


@pytest.mark.parametrize("scheme, backend, rules", CASES,
                         ids=[f"{s}-{b}-{'tokens-sharded' if r is RING else 'tokens-replicated'}" for s, b, r in CASES])
def test_expert_parallel_equals_single_device(scheme, backend, rules):
    mesh = build_mesh(load_mesh_config({"mesh": {"fsdp": 2, "expert": 4}, "rules": rules}))
    args = inputs()
    ref = reference(backend)
    step = value_and_grads(backend)   # a fresh jit: hooks act at trace time
    # `gmm` runs the megablox TPU kernels in Pallas interpret mode inside the shard_map
    with jax.set_mesh(mesh), use(model_hooks(mesh, rules, scheme, gmm_impl="megablox-interpret")):
        jaxpr = str(jax.make_jaxpr(step)(*args))
        out = step(*args)
    assert "shard_map" in jaxpr
    assert ("all_to_all" in jaxpr) == (scheme == "all_to_all")
    assert ("all_gather" in jaxpr) == (scheme == "ring" and rules is RING)
    compare(out, ref)


def test_experts_that_do_not_divide_fall_back_to_the_plain_block():
    mesh = build_mesh(load_mesh_config({"mesh": {"fsdp": 2, "expert": 4}, "rules": RING}))
    assert list(expert_axes(mesh, RING, 6)) == []
    args = inputs(num_experts=6)
    ref = reference("ragged", 6)
    step = value_and_grads("ragged")
    with jax.set_mesh(mesh), use(model_hooks(mesh, RING, "ring")):
        assert "shard_map" not in str(jax.make_jaxpr(step)(*args))
        out = step(*args)
    compare(out, ref)


def test_local_expert_ffn_skips_remote_pairs():
    """Pairs marked remote (id == E_local) contribute nothing, in both local implementations."""
    x, _, gate, up, down, _ = (np.asarray(a, np.float64) for a in inputs())
    ids = np.random.default_rng(0).integers(0, 5, (N, K))   # 4 local experts + remote id 4
    w = np.random.default_rng(1).random((N, K))
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    expected = np.zeros((N, H))
    for n in range(N):
        for j in range(K):
            e = ids[n, j]
            if e < 4:
                expected[n] += w[n, j] * (silu(x[n] @ gate[e]) * (x[n] @ up[e])) @ down[e]
    x, gate, up, down = (jnp.asarray(a, jnp.float32) for a in (x, gate, up, down))
    ids, w = jnp.asarray(ids), jnp.asarray(w, jnp.float32)
    for impl in ("ragged", "dense"):
        got = local_expert_ffn(x, w, ids, gate[:4], up[:4], down[:4], impl)
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=1e-5, err_msg=impl)
