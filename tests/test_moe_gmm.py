"""The grouped-matmul op (custom VJP: gmm forward, gmm input gradient, tgmm weight gradient) and the
`gmm` MoE backend agree with per-group / dense references in values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ace_jax.models import moe
from ace_jax.models.moe_gmm import IMPLS, default_impl, grouped_matmul, tokamax_available

SIZES = [10, 0, 17, 9]   # an empty group, and 4 rows past the groups (M = 40)


def _reference(lhs, rhs, sizes):
    """Per-group numpy matmul; rows past the groups are zero."""
    out = np.zeros((lhs.shape[0], rhs.shape[2]), np.float64)
    start = 0
    for g, n in enumerate(sizes):
        out[start:start + n] = np.asarray(lhs[start:start + n], np.float64) @ np.asarray(rhs[g], np.float64)
        start += n
    return out


def _args(m=40, k=16, n=24):
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    lhs = jax.random.normal(ks[0], (m, k))
    rhs = jax.random.normal(ks[1], (len(SIZES), k, n))
    cot = jax.random.normal(ks[2], (m, n))
    return lhs, rhs, cot


TOKAMAX = pytest.mark.skipif(not tokamax_available(), reason="tokamax (the gpu / dev extra) is not installed")


# On CPU the tokamax kernels (Mosaic GPU, Triton) cannot run: tokamax falls back to its XLA path,
# so this checks the wiring (arguments, the fallback, the custom VJP around it), not the kernels.
@pytest.mark.parametrize("impl", ["xla", "megablox-interpret", pytest.param("tokamax-triton", marks=TOKAMAX),
                                  pytest.param("tokamax", marks=TOKAMAX)])
def test_grouped_matmul_values_and_gradients(impl):
    lhs, rhs, cot = _args()
    sizes = jnp.array(SIZES, jnp.int32)
    out, vjp = jax.vjp(lambda a, b: grouped_matmul(a, b, sizes, impl), lhs, rhs)
    np.testing.assert_allclose(out, _reference(lhs, rhs, SIZES), atol=1e-4)
    d_lhs, d_rhs = vjp(cot)
    ref_lhs, ref_rhs = jax.vjp(lambda a, b: jnp.asarray(_masked_dense(a, b, SIZES)), lhs, rhs)[1](cot)
    np.testing.assert_allclose(d_lhs, ref_lhs, atol=1e-4)
    np.testing.assert_allclose(d_rhs, ref_rhs, atol=1e-4)
    assert float(jnp.abs(d_rhs[1]).max()) == 0.0          # the empty group gets no gradient
    assert float(jnp.abs(d_lhs[sum(SIZES):]).max()) == 0.0  # nor do the rows past the groups


def _masked_dense(lhs, rhs, sizes):
    """Differentiable reference: every row times every group's weights, one-hot selected."""
    group_of = np.repeat(np.arange(len(sizes) + 1), sizes + [lhs.shape[0] - sum(sizes)])
    onehot = jnp.asarray(group_of[:, None] == np.arange(len(sizes))[None], lhs.dtype)
    return jnp.einsum("mg,gmn->mn", onehot, jnp.einsum("mk,gkn->gmn", lhs, rhs))


def test_grouped_matmul_rejects_bad_input():
    lhs, rhs, _ = _args()
    with pytest.raises(ValueError, match="unknown grouped-matmul impl 'cuda'"):
        grouped_matmul(lhs, rhs, jnp.array(SIZES), "cuda")
    with pytest.raises(ValueError, match="group_sizes must be \\[4\\]"):
        grouped_matmul(lhs, rhs, jnp.array([40]), "xla")
    with pytest.raises(ValueError, match="lhs \\[M, K\\] and rhs \\[G, K, N\\]"):
        grouped_matmul(lhs, rhs[:, :8], jnp.array(SIZES), "xla")
    assert set(IMPLS) == {"megablox", "megablox-interpret", "xla", "tokamax", "tokamax-mosaic", "tokamax-triton"}


def test_megablox_kernels_in_the_moe_block_match_dense():
    ks = jax.random.split(jax.random.PRNGKey(3), 6)
    n, h, e, i, k = 48, 16, 8, 12, 3
    x = jax.random.normal(ks[0], (n, h))
    routing = moe.route(x, 2.0 * jax.random.normal(ks[1], (h, e)), k, True)
    gate, up = (0.3 * jax.random.normal(kk, (e, h, i)) for kk in ks[2:4])
    down = 0.3 * jax.random.normal(ks[4], (e, i, h))
    cot = jax.random.normal(ks[5], (n, h))

    def interpret(lhs, rhs, sizes):
        return grouped_matmul(lhs, rhs, sizes, "megablox-interpret")

    def loss(fn, x, gate, up, down):
        return jnp.sum(cot * fn(x, routing, gate, up, down))

    kernel = lambda x, r, g, u, d: moe.grouped_ffn(x, r.weights, r.ids, g, u, d, interpret)  # noqa: E731
    ref_val, ref_grads = jax.value_and_grad(loss, argnums=(1, 2, 3, 4))(moe.BACKENDS["dense"], x, gate, up, down)
    val, grads = jax.value_and_grad(loss, argnums=(1, 2, 3, 4))(kernel, x, gate, up, down)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_auto_picks_the_kernels_per_platform():
    assert moe.auto_backend("tpu") == "gmm" and default_impl("tpu") == "megablox"
    assert moe.auto_backend("cpu") == "blocked" and default_impl("cpu") == "xla"
    gpu = ("gmm", "tokamax") if tokamax_available() else ("blocked", "xla")
    assert (moe.auto_backend("gpu"), default_impl("gpu")) == gpu
    assert moe.resolve_backend("auto") == moe.auto_backend(jax.default_backend())
