"""Pure building blocks of the Qwen3 decoder: RMSNorm, RoPE, attention masks, attention, SwiGLU.

Functions take plain arrays (one layer's slice of the stacked parameters) so that they run
inside `lax.scan` over layers and under `shard_map` without NNX machinery.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Large finite negative instead of -inf so that fully masked rows (padding queries) stay finite.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], dtype,
          init: str = "normal", scale: float = 0.02) -> nnx.Param:
    """A parameter with logical axis names stored as metadata `logical_axes`."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} and logical axes {axes} differ in rank")
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (scale * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in fp32, cast back, then scaled (transformers' Qwen3RMSNorm order)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim] for integer positions [B, T] (fp32)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on x [B, T, heads, D] with cos/sin [B, T, D]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def build_attention_mask(query_index: jax.Array, key_index: jax.Array, key_valid: jax.Array | None,
                   query_segments: jax.Array | None = None,
                   key_segments: jax.Array | None = None) -> jax.Array:
    """Boolean [B, 1, T, S]: causal by index, keys valid, same segment (packing)."""
    mask = key_index[:, None, :] <= query_index[:, :, None]
    if key_valid is not None:
        mask = mask & key_valid[:, None, :].astype(bool)
    if query_segments is not None and key_segments is not None:
        mask = mask & (query_segments[:, :, None] == key_segments[:, None, :])
    return mask[:, None, :, :]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q [B,T,N,D], k/v [B,S,K,D], mask [B,1,T,S] -> [B,T,N,D]."""
    b, t, n, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, :, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, n, d)


def attend_shared(q: jax.Array, k_shared: jax.Array, v_shared: jax.Array, shared_valid: jax.Array,
                  k: jax.Array, v: jax.Array, mask: jax.Array, prefix) -> jax.Array:
    """`attend` over two key sets under one softmax: each group's shared keys k/v_shared
    [U, S1, K, D] (valid where `shared_valid` [U, S1]), multiplied once per group with its rows'
    queries (`prefix`, a `paged.SharedPrefix`), and per-row keys k/v [B, S2, K, D] under `mask`
    [B, 1, T, S2]. q [B, T, N, D] -> [B, T, N, D]."""
    b, t, n, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, d)
    s1 = jnp.einsum("urtkgd,uskd->urkgts", q[prefix.grid], k_shared, preferred_element_type=jnp.float32)
    s1 = jnp.where(shared_valid[:, None, None, None, None, :], s1, MASK_VALUE)[prefix.group, prefix.member]
    s2 = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    s2 = jnp.where(mask[:, :, None, :, :], s2, MASK_VALUE)
    probs = jax.nn.softmax(jnp.concatenate([s1, s2], axis=-1) * (d ** -0.5), axis=-1).astype(v.dtype)
    split = k_shared.shape[1]
    out1 = jnp.einsum("urkgts,uskd->urtkgd", probs[..., :split][prefix.grid], v_shared)[prefix.group, prefix.member]
    out = out1 + jnp.einsum("bkgts,bskd->btkgd", probs[..., split:], v)
    return out.reshape(b, t, n, d)


def swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    """Dense SwiGLU MLP: x [..., H], gate/up [H, I], down [I, H]."""
    h = jax.nn.silu(x @ gate) * (x @ up)
    return h @ down
