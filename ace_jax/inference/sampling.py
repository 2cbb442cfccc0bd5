"""Token sampling with per-row temperature / top-p / top-k / min-p, as SGLang does it.

Logprobs are those of the temperature-scaled distribution before any top-k / top-p / min-p
filtering (SGLang's default). Greedy rows (temperature < 1e-6) take the argmax and report
logprobs at temperature 1, like SGLang (which turns them into top_k=1, temperature=1).
Filtering follows SGLang's torch sampler: sort descending, drop ranks >= top_k, drop tokens
whose preceding cumulative probability exceeds top_p, then drop tokens below min_p times the
largest probability. Sampling is Gumbel-max over the kept log-probabilities with one key per
row, so a row's sample does not depend on the other rows in the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GREEDY_EPS = 1e-6


def stop_ids(params, eos_token_ids) -> tuple[int, ...]:
    """The token ids that end a sample of `params` (SamplingParams): its own stop ids, plus the
    model's EOS ids unless `ignore_eos`."""
    eos = () if params.ignore_eos else eos_token_ids
    return tuple(sorted(set(params.stop_token_ids) | set(eos)))


def scaled_logprobs(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """log_softmax(logits / T) per row (T = 1 for greedy rows); logits [B, V], temperature [B]."""
    t = jnp.where(temperature < GREEDY_EPS, 1.0, temperature).astype(jnp.float32)
    return jax.nn.log_softmax(logits.astype(jnp.float32) / t[:, None], axis=-1)


def filter_logprobs(logprobs: jax.Array, top_k: jax.Array, top_p: jax.Array, min_p: jax.Array) -> jax.Array:
    """Logprobs with filtered-out tokens set to -inf. top_k [B] int (-1: all), top_p/min_p [B]."""
    b, v = logprobs.shape
    order = jnp.argsort(-logprobs, axis=-1, stable=True)
    probs = jnp.exp(jnp.take_along_axis(logprobs, order, axis=-1))
    before = jnp.cumsum(probs, axis=-1) - probs
    rank = jnp.arange(v)[None, :]
    k = jnp.where(top_k < 0, v, top_k)[:, None]
    keep = (rank < k) & (before <= top_p[:, None]) & (probs >= probs[:, :1] * min_p[:, None])
    keep = keep | (rank == 0)
    keep_vocab = jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], order].set(keep)
    return jnp.where(keep_vocab, logprobs, -jnp.inf)


def needs_filter(temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, min_p: jax.Array,
                 vocab: int) -> jax.Array:
    """Whether any sampled (non-greedy) row filters its distribution (else the sort is skipped)."""
    sampled = temperature >= GREEDY_EPS
    filtering = ((top_k > 0) & (top_k < vocab)) | (top_p < 1.0) | (min_p > 0.0)
    return jnp.any(sampled & filtering)


def sample(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array, min_p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(token ids [B] int32, their logprobs [B]) from logits [B, V] with one PRNG key per row."""
    v = logits.shape[-1]
    logprobs = scaled_logprobs(logits, temperature)
    kept = jax.lax.cond(needs_filter(temperature, top_k, top_p, min_p, v),
                        lambda lp: filter_logprobs(lp, top_k, top_p, min_p), lambda lp: lp, logprobs)
    gumbel = jax.vmap(lambda key: jax.random.gumbel(key, (v,), jnp.float32))(keys)
    sampled = jnp.argmax(kept + gumbel, axis=-1)
    greedy = jnp.argmax(logits, axis=-1)
    tokens = jnp.where(temperature < GREEDY_EPS, greedy, sampled).astype(jnp.int32)
    return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
