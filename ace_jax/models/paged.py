"""Paged KV cache addressing: fixed-size blocks in a pool, read and written through block tables.

A pool holds, per run of layers, keys and values of shape [layers, blocks, block_size, kv_heads,
head_dim] (or one [blocks, block_size, kv_heads, head_dim] buffer per layer). A row's block table [M] lists the pool blocks that hold its logical slots 0 .. M *
block_size - 1 in order (slot s lives in block table[s // block_size] at offset s % block_size).
Block 0 is the trash block: unused table entries and the writes of padding tokens land there and
are never read unmasked. This is the pure-JAX reference path (a gather); it runs on every backend.
Reads gather whole blocks (`read_blocks`: index by block, then reshape), a few % faster on CPU
than a per-slot gather.

`SharedPrefix` splits a decode batch's keys into prompt blocks shared by a group of rows (read
once per group) and each row's private blocks, so a forked group's prompt is not gathered once
per sample (on CPU the per-row gather of the whole table is most of a decode step).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

TRASH_BLOCK = 0


def flat_index(block_tables: jax.Array, slots: jax.Array, block_size: int) -> jax.Array:
    """Pool row (block * block_size + offset) of logical `slots` [B, T] through tables [B, M]."""
    blocks = jnp.take_along_axis(block_tables, slots // block_size, axis=1)
    return blocks * block_size + slots % block_size


def write_index(block_tables: jax.Array, slots: jax.Array, valid: jax.Array | None,
                block_size: int) -> jax.Array:
    """Where tokens at `slots` [B, T] are written; invalid tokens (padding) go to the trash block."""
    index = flat_index(block_tables, jnp.clip(slots, 0, block_tables.shape[1] * block_size - 1), block_size)
    if valid is None:
        return index
    return jnp.where(valid, index, TRASH_BLOCK * block_size + slots % block_size)


def write(pool: jax.Array, index: jax.Array, new: jax.Array) -> jax.Array:
    """Scatter new [B, T, K, D] into one layer's pool [blocks, block_size, K, D] at flat `index` [B, T]."""
    nb, bs, k, d = pool.shape
    flat = pool.reshape(nb * bs, k, d).at[index.reshape(-1)].set(new.reshape(-1, k, d).astype(pool.dtype))
    return flat.reshape(nb, bs, k, d)


def read_blocks(pool: jax.Array, block_tables: jax.Array) -> jax.Array:
    """One layer's keys or values [B, M * block_size, K, D] of every slot of tables [B, M]: whole
    blocks gathered, then flattened: slot s of row b is pool[tables[b, s // block_size], s % block_size]."""
    b, m = block_tables.shape
    _, bs, k, d = pool.shape
    return pool[block_tables].reshape(b, m * bs, k, d)


class SharedPrefix(NamedTuple):
    """Prompt blocks read once per group of rows (cascade attention in decoding).

    `tables` [U, Ms] lists U groups' shared prompt blocks and `lengths` [U] their slots (whole
    blocks). Row b is member `member[b]` of group `group[b]`; `grid` [U, R] is the inverse (the
    row of each member; unused entries name any row). With it, a row's `block_tables` hold only
    its private blocks: private slot j is logical slot lengths[group] + j."""

    tables: jax.Array
    lengths: jax.Array
    group: jax.Array
    member: jax.Array
    grid: jax.Array

    def offsets(self) -> jax.Array:
        """Logical slot of each row's first private slot: [B]."""
        return self.lengths[self.group]

    def valid(self, block_size: int) -> jax.Array:
        """[U, Ms * block_size]: the written slots of each group's prompt blocks."""
        slot = jnp.arange(self.tables.shape[1] * block_size, dtype=jnp.int32)
        return slot[None, :] < self.lengths[:, None]
