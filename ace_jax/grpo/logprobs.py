"""Per-token logprobs (and entropy) from final hidden states, chunked over tokens.

``chunked_logprobs`` flattens ``[B, T]`` tokens, pads their number to a multiple of the chunk
size, and maps over chunks (``lax.map``); each chunk applies the LM head, divides the logits
by the temperature and takes an fp32 log-softmax. A custom VJP recomputes a chunk's logits in
the backward pass instead of storing them: the ``[tokens, vocab]`` matrix is never materialized
for the whole batch, only ``[chunk_size, vocab]`` at a time.

On a mesh (sharding hooks active), the LM-head gradient is accumulated over the chunks in fp32
by that backward loop and returned once: under ``vmap`` over rows (as the train step calls it)
it is a per-row partial sum, so the head gradient is reduced across devices once per step rather
than once per chunk, and the head is gathered once (sharding constraint: replicated). On one
device the chunks are ``jax.checkpoint``-ed and differentiated as usual (no per-row partials).
``naive_logprobs`` is the plain reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ace_jax.models.constraints import active, constrain

Array = jax.Array


def _check(hidden: Array, lm_head_weight: Array, targets: Array, temperature) -> None:
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    if lm_head_weight.ndim != 2 or lm_head_weight.shape[0] != hidden.shape[2]:
        raise ValueError(
            f"lm_head_weight must be [H={hidden.shape[2]}, V], got {tuple(lm_head_weight.shape)}"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"targets must be {tuple(hidden.shape[:2])}, got {tuple(targets.shape)}")
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _token_logprobs(x: Array, w: Array, y: Array, temperature, return_entropy: bool):
    """x [N, H], w [H, V], y [N] -> logprobs [N] (and entropy [N]), in fp32."""
    logits = jnp.dot(x, w, preferred_element_type=jnp.float32).astype(jnp.float32) / temperature
    lse = jax.nn.logsumexp(logits, axis=-1)
    lp = jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=-1)[:, 0] - lse
    if not return_entropy:
        return lp
    probs = jnp.exp(logits - lse[:, None])
    return lp, lse - (probs * logits).sum(axis=-1)


def chunked_logprobs(
    hidden: Array,
    lm_head_weight: Array,
    targets: Array,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_entropy: bool = False,
) -> Array | tuple[Array, Array]:
    """log p(targets) ``[B, T]`` fp32 (and the entropy ``[B, T]`` with ``return_entropy``).

    ``hidden`` [B, T, H] (any float dtype; the matmul accumulates in fp32), ``lm_head_weight``
    [H, V], ``targets`` [B, T] int. Logits are divided by ``temperature``.
    """
    _check(hidden, lm_head_weight, targets, temperature)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    b, t, h = hidden.shape
    n = b * t
    chunk = min(chunk_size, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n
    x = jnp.pad(hidden.reshape(n, h), ((0, pad), (0, 0))).reshape(n_chunks, chunk, h)
    y = jnp.pad(targets.reshape(n), (0, pad)).reshape(n_chunks, chunk)

    # One device: plain autodiff, recomputing each chunk.
    if getattr(active(), "mesh", None) is None:
        one_chunk = jax.checkpoint(lambda xy: _token_logprobs(xy[0], lm_head_weight, xy[1], temperature,
                                                              return_entropy))
        out = jax.lax.map(one_chunk, (x, y))
    else:
        w = constrain(lm_head_weight, (None, None))   # gathered once, not once per chunk
        out = _chunk_map(x, w, y, temperature, return_entropy)

    def unchunk(a):
        return a.reshape(n_chunks * chunk)[:n].reshape(b, t)

    return tuple(map(unchunk, out)) if return_entropy else unchunk(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunk_map(x, w, y, temperature, return_entropy):
    """Per-token outputs [n_chunks, chunk] of x [n_chunks, chunk, H] by the head w [H, V]."""
    return jax.lax.map(lambda xy: _token_logprobs(xy[0], w, xy[1], temperature, return_entropy), (x, y))


def _chunk_map_fwd(x, w, y, temperature, return_entropy):
    return _chunk_map(x, w, y, temperature, return_entropy), (x, w, y)


def _chunk_map_bwd(temperature, return_entropy, residuals, ct):
    """Recompute each chunk's logits; d x per chunk, d w summed over chunks in fp32 (one output)."""
    x, w, y = residuals

    def body(dw, inputs):
        xc, yc, ctc = inputs
        _, vjp = jax.vjp(lambda a, b: _token_logprobs(a, b, yc, temperature, return_entropy), xc, w)
        dx, dwc = vjp(ctc)
        return dw + dwc.astype(jnp.float32), dx

    dw, dx = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), (x, y, ct))
    return dx, dw.astype(w.dtype), None


_chunk_map.defvjp(_chunk_map_fwd, _chunk_map_bwd)


def naive_logprobs(
    hidden: Array,
    lm_head_weight: Array,
    targets: Array,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> Array | tuple[Array, Array]:
    """Reference: the whole ``[B*T, V]`` fp32 logits at once (same math, no chunking)."""
    _check(hidden, lm_head_weight, targets, temperature)
    b, t, h = hidden.shape
    out = _token_logprobs(
        hidden.reshape(b * t, h), lm_head_weight, targets.reshape(b * t), temperature,
        return_entropy,
    )
    if return_entropy:
        return out[0].reshape(b, t), out[1].reshape(b, t)
    return out.reshape(b, t)
