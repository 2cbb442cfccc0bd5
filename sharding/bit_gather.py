"""All-gathers of 16-bit floats moved as same-width integers, with the float reduce-scatter as VJP.

A gather is pure data movement, so gathering a bf16 array as its uint16 bit pattern
(`lax.bitcast_convert_type`) moves the same bytes on every backend. It matters for the CPU
compiler (which `ace-jax plan` uses for GPU targets): XLA:CPU widens every bf16 collective to
f32 (inserted converts, `*_promoted` reducers) and so doubles its traffic, but leaves integer
collectives alone. Reductions cannot be moved as integers; the backward pass of each gather here
is the matching reduce-scatter of the cotangent.

- `all_gather(x, axes, axis)`: inside `shard_map`, a tiled all-gather; VJP `psum_scatter`.
- `psum_scatter(x, axes, axis)`: inside `shard_map`, a tiled reduce-scatter whose VJP is
  `all_gather` above (the cotangent gathered as bits); off TPU one all-to-all of bits and a
  local fp32 sum (the same bytes as a ring reduce-scatter).
- `gather_weight(w, sharded, gathered, dtype)`: under `jit`, a sharded weight cast to `dtype`
  and resharded to `gathered` (a layout with fewer sharded axes) as bits; VJP: the cotangent
  constrained back to `sharded`, which the SPMD partitioner turns into a reduction of the
  per-device partial gradients (GPU and TPU compilers form a reduce-scatter; XLA:CPU has no
  reduce-scatter creator pass and keeps all-reduce + slice, twice the traffic).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from ace_jax.models.constraints import target_platform

_BITS = {2: jnp.uint16}   # float itemsize -> same-width unsigned integer


def _as_bits(x: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, _BITS[x.dtype.itemsize])


def _from_bits(u: jax.Array, dtype) -> jax.Array:
    return jax.lax.bitcast_convert_type(u, dtype)


def moves_as_bits(dtype) -> bool:
    """Whether arrays of `dtype` are gathered as integers here (16-bit floats: bf16, f16)."""
    dtype = jnp.dtype(dtype)
    return jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize in _BITS


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def all_gather(x: jax.Array, axes: Sequence[str], axis: int = 0) -> jax.Array:
    """Tiled all-gather of `x` along `axis` over mesh `axes` (inside shard_map), as bits when 16-bit."""
    if not moves_as_bits(x.dtype):
        return jax.lax.all_gather(x, tuple(axes), axis=axis, tiled=True)
    return _from_bits(jax.lax.all_gather(_as_bits(x), tuple(axes), axis=axis, tiled=True), x.dtype)


def _all_gather_fwd(x, axes, axis):
    return all_gather(x, axes, axis), None


def _all_gather_bwd(axes, axis, _, ct):
    return (_reduce_scatter(ct, tuple(axes), axis),)


def _reduce_scatter(x: jax.Array, axes: tuple[str, ...], axis: int) -> jax.Array:
    """Tiled reduce-scatter. Off TPU, 16-bit floats go as one all-to-all of their bits and a local
    fp32 sum of the pieces received: a device sends and receives (n-1)/n of the payload, as in a
    ring reduce-scatter, without the CPU compiler's widening, and the sum is in fp32 (on NVLink /
    NVSwitch an all-to-all runs at the reduce-scatter's bandwidth). TPUs keep the ring (torus links)."""
    if not moves_as_bits(x.dtype) or target_platform() == "tpu":
        return jax.lax.psum_scatter(x, axes, scatter_dimension=axis, tiled=True)
    n = jax.lax.axis_size(axes)
    moved = jnp.moveaxis(x, axis, 0)
    if moved.shape[0] % n:
        raise ValueError(f"reduce-scatter of dimension {moved.shape[0]} over {n} devices: not divisible")
    pieces = _as_bits(moved).reshape((n, moved.shape[0] // n) + moved.shape[1:])
    received = _from_bits(jax.lax.all_to_all(pieces, axes, 0, 0, tiled=False), x.dtype)
    return jnp.moveaxis(jnp.sum(received.astype(jnp.float32), axis=0).astype(x.dtype), 0, axis)


all_gather.defvjp(_all_gather_fwd, _all_gather_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def psum_scatter(x: jax.Array, axes: Sequence[str], axis: int = 0) -> jax.Array:
    """Tiled reduce-scatter of `x` along `axis` over mesh `axes` (inside shard_map); its VJP
    gathers the cotangent with `all_gather` (as bits when 16-bit)."""
    return _reduce_scatter(x, tuple(axes), axis)


def _psum_scatter_fwd(x, axes, axis):
    return psum_scatter(x, axes, axis), None


def _psum_scatter_bwd(axes, axis, _, ct):
    return (all_gather(ct, axes, axis),)


psum_scatter.defvjp(_psum_scatter_fwd, _psum_scatter_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def gather_weight(w: jax.Array, sharded: NamedSharding, gathered: NamedSharding, dtype=None) -> jax.Array:
    """`w` (laid out as `sharded`) cast to `dtype` on its shards and resharded to `gathered` under
    jit, as bits when 16-bit; the gradient is constrained back to `sharded` (the partitioner
    reduces the per-device partial products at the matmul, in `dtype`)."""
    x = jax.lax.with_sharding_constraint(w, sharded).astype(dtype or w.dtype)
    if not moves_as_bits(x.dtype):
        return jax.lax.with_sharding_constraint(x, gathered)
    # the bits are pinned to `sharded` first, so that the gather happens on them (not on `x`, to
    # which sharding propagation would otherwise move it)
    bits = jax.lax.with_sharding_constraint(_as_bits(x), sharded)
    return _from_bits(jax.lax.with_sharding_constraint(bits, gathered), x.dtype)


def _gather_weight_fwd(w, sharded, gathered, dtype):
    return gather_weight(w, sharded, gathered, dtype), jnp.zeros((), w.dtype)


def _gather_weight_bwd(sharded, gathered, dtype, like, ct):
    return (jax.lax.with_sharding_constraint(ct.astype(like.dtype), sharded),)


gather_weight.defvjp(_gather_weight_fwd, _gather_weight_bwd)
