"""Sampling filters and the sampled distribution against a NumPy transcription of SGLang's rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ace_jax.inference import sampling


def reference_keep(probs: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """SGLang's torch sampler: sort, drop rank >= top_k, drop cumsum-before > top_p, drop < min_p * max."""
    order = np.argsort(-probs, kind="stable")
    p = probs[order].copy()
    before = np.cumsum(p) - p
    k = len(p) if top_k < 0 else top_k
    p[np.arange(len(p)) >= k] = 0
    p[before > top_p] = 0
    p[p < p[0] * min_p] = 0
    keep = np.zeros(len(p), bool)
    keep[order] = p > 0
    return keep


def test_filter_matches_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32) * 2
    params = [(-1, 1.0, 0.0), (5, 1.0, 0.0), (-1, 0.6, 0.0), (-1, 1.0, 0.2), (10, 0.8, 0.05), (1, 0.5, 0.5)]
    top_k = jnp.array([p[0] for p in params])
    top_p = jnp.array([p[1] for p in params], jnp.float32)
    min_p = jnp.array([p[2] for p in params], jnp.float32)
    temp = jnp.full(6, 0.8, jnp.float32)
    lp = sampling.scaled_logprobs(jnp.asarray(logits), temp)
    np.testing.assert_allclose(lp, jax.nn.log_softmax(logits / 0.8, axis=-1), atol=1e-6)
    kept = np.isfinite(np.asarray(jax.jit(sampling.filter_logprobs)(lp, top_k, top_p, min_p)))
    for row, (k, p, m) in enumerate(params):
        np.testing.assert_array_equal(kept[row], reference_keep(np.exp(np.asarray(lp[row])), k, p, m))
    assert kept[1].sum() == 5 and kept[5].sum() == 1


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
    n = 6000
    rows = jnp.broadcast_to(logits, (n, 6))
    keys = jax.random.split(jax.random.key(0), n)
    temp = jnp.full(n, 1.0)
    tokens, lps = jax.jit(sampling.sample)(rows, keys, temp, jnp.full(n, -1), jnp.full(n, 0.75), jnp.zeros(n))
    # top_p 0.75 keeps 0.4, 0.25, 0.15 (the cumulative mass before 0.1 is 0.8 > 0.75)
    freq = np.bincount(np.asarray(tokens), minlength=6) / n
    np.testing.assert_allclose(freq, [0.5, 0.3125, 0.1875, 0, 0, 0], atol=0.025)
    np.testing.assert_allclose(lps, np.log([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])[np.asarray(tokens)], atol=1e-5)


def test_greedy_rows_take_the_argmax_with_temperature_one_logprobs():
    logits = jnp.array([[0.1, 2.0, 1.0], [3.0, 0.0, 2.9]])
    keys = jax.random.split(jax.random.key(1), 2)
    tokens, lps = jax.jit(sampling.sample)(logits, keys, jnp.zeros(2), jnp.full(2, -1), jnp.ones(2), jnp.zeros(2))
    assert tokens.tolist() == [1, 0]
    np.testing.assert_allclose(lps, jax.nn.log_softmax(logits, axis=-1)[jnp.arange(2), tokens], atol=1e-6)
