"""Per-block expert matmul: rows in blocks [B, blk, K], block b multiplied by the weights of its
expert `experts[b]` out of w [E, K, N], with a custom VJP that never gathers weights per block.

Autodiff of `einsum(xb, w[experts])` materializes the gathered weights [B, K, N] forward and
scatter-adds a [B, K, N] weight gradient backward. Here each block indexes its expert's weights
in place (a loop over blocks), the input gradient is the same loop with the weights transposed,
and the weight gradient accumulates block by block into one fp32 [E, K, N] buffer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _per_block(xb: jax.Array, w: jax.Array, experts: jax.Array, transpose: bool) -> jax.Array:
    def one(args):
        x, e = args
        we = w[e].T if transpose else w[e]
        return jnp.dot(x, we, preferred_element_type=jnp.float32).astype(xb.dtype)

    return jax.lax.map(one, (xb, experts))


@jax.custom_vjp
def _block_matmul(xb, w, experts):
    return _per_block(xb, w, experts, transpose=False)


def _fwd(xb, w, experts):
    return _per_block(xb, w, experts, transpose=False), (xb, w, experts)


def _bwd(residuals, grad):
    xb, w, experts = residuals
    d_x = _per_block(grad, w, experts, transpose=True)

    def accumulate(dw, args):
        x, g, e = args
        update = dw[e] + jnp.dot(x.T, g, preferred_element_type=jnp.float32)
        return jax.lax.dynamic_update_index_in_dim(dw, update, e, 0), None

    d_w, _ = jax.lax.scan(accumulate, jnp.zeros(w.shape, jnp.float32), (xb, grad, experts))
    return d_x, d_w.astype(w.dtype), None


_block_matmul.defvjp(_fwd, _bwd)


def block_matmul(xb: jax.Array, w: jax.Array, experts: jax.Array) -> jax.Array:
    """xb [B, blk, K] x w [E, K, N] by block expert ids `experts` [B] (int, in 0..E-1) -> [B, blk, N]."""
    if xb.ndim != 3 or w.ndim != 3 or xb.shape[2] != w.shape[1]:
        raise ValueError(f"block_matmul needs xb [B, blk, K] and w [E, K, N]; got {xb.shape} and {w.shape}")
    if experts.shape != (xb.shape[0],):
        raise ValueError(f"experts must be [{xb.shape[0]}], got {tuple(experts.shape)}")
    return _block_matmul(xb, w.astype(xb.dtype), experts.astype(jnp.int32))
