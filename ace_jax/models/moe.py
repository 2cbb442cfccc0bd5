"""Qwen3-MoE sparse block: fp32 router, top-k, optional renormalization, dispatch backends.

Backends (all dropless, equal in values and gradients; `dense` is the reference):
- `dense`: every expert on every token, combined with a one-hot weight matrix.
- `ragged`: sort (token, slot) pairs by expert, `jax.lax.ragged_dot`, scatter-add back.
- `blocked`: sort by expert, pad each expert's group to a multiple of a block size, and multiply
  each block by its expert's weights in place (`block_matmul`, a loop over blocks with a custom
  VJP: no per-block weight gather; fast on CPU, where `ragged_dot` lowers to a dense loop over experts).
- `sparse`: each (token, slot) pair gathers its expert's weights and runs only that expert: no
  padding and no unrouted experts, but N*k weight gathers; for decode batches with fewer pairs
  than experts (N * k < E), where every other backend reads or computes all experts.
- `capacity`: each (token, slot) pair placed at its rank within its expert in a fixed
  [E, C, H] buffer (C = `capacity(N*k, E)`), one batched matmul per projection over all experts,
  gathered back with the routing weights; when an expert gets more than C pairs the whole block
  runs `dense` instead (a `lax.cond`), so it stays dropless. For decode batches on CPU.
- `gmm`: sort by expert and run `moe_gmm.grouped_matmul` (custom VJP of three grouped matmuls:
  the Pallas megablox kernels on TPU targets, tokamax's kernels on GPU, `ragged_dot` elsewhere).

`auto` resolves for the compile target (the active sharding hooks' mesh, else JAX's backend).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ace_jax.models.block_matmul import block_matmul
from ace_jax.models.constraints import active, expert_ffn, target_platform
from ace_jax.models.moe_gmm import default_impl, grouped_matmul, tokamax_available


class Routing(NamedTuple):
    """Router decision for N tokens: weights [N, k] (hidden dtype), expert ids [N, k], probs [N, E] fp32."""

    weights: jax.Array
    ids: jax.Array
    probs: jax.Array


def route(x: jax.Array, router: jax.Array, top_k: int, norm_topk_prob: bool,
          forced_ids: jax.Array | None = None, gate_dtype: str = "compute") -> Routing:
    """Gate matmul in x's dtype (`gate_dtype="compute"`, as transformers and SGLang) or fp32,
    softmax in fp32, then top-k; `forced_ids` [N, k] replays an engine's choice."""
    dtype = x.dtype if gate_dtype == "compute" else jnp.float32
    logits = (x.astype(dtype) @ router.astype(dtype)).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    if forced_ids is None:
        weights, ids = jax.lax.top_k(probs, top_k)
    else:
        ids = forced_ids.astype(jnp.int32)
        weights = jnp.take_along_axis(probs, ids, axis=-1)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return Routing(weights.astype(x.dtype), ids.astype(jnp.int32), probs)


def _expert_ffn_dense(x, routing, gate, up, down):
    num_experts = gate.shape[0]
    combine = jnp.zeros((x.shape[0], num_experts), x.dtype)
    combine = combine.at[jnp.arange(x.shape[0])[:, None], routing.ids].add(routing.weights)
    h = jax.nn.silu(jnp.einsum("nh,ehi->nei", x, gate)) * jnp.einsum("nh,ehi->nei", x, up)
    out = jnp.einsum("nei,eih->neh", h, down)
    return jnp.einsum("ne,neh->nh", combine, out)


def _expert_ffn_sparse(x, routing, gate, up, down):
    ids = routing.ids
    h = jax.nn.silu(jnp.einsum("nh,nkhi->nki", x, gate[ids])) * jnp.einsum("nh,nkhi->nki", x, up[ids])
    out = jnp.einsum("nki,nkih->nkh", h, down[ids])
    return jnp.einsum("nk,nkh->nh", routing.weights, out)


def _sort_by_expert(routing: Routing, num_experts: int):
    """(order, token index, group sizes) for the N*k (token, slot) pairs sorted by expert."""
    flat_ids = routing.ids.reshape(-1)
    order = jnp.argsort(flat_ids, stable=True)
    top_k = routing.ids.shape[1]
    token_of = order // top_k
    group_sizes = jnp.bincount(flat_ids, length=num_experts).astype(jnp.int32)
    return order, token_of, group_sizes


Matmul = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def grouped_ffn(x: jax.Array, weights: jax.Array, ids: jax.Array, gate: jax.Array, up: jax.Array,
                down: jax.Array, matmul: Matmul) -> jax.Array:
    """SwiGLU experts on x [N, H] for the (token, slot) pairs ids / weights [N, k], sorted by expert
    and run with a grouped `matmul(lhs, rhs, group_sizes)`; id E (= gate.shape[0]) skips a pair.
    `matmul` must return zero rows past sum(group_sizes)."""
    num_experts = gate.shape[0]
    order, token_of, sizes = _sort_by_expert(Routing(weights, ids, None), num_experts)  # id E sorts last
    xs = x[token_of]
    h = jax.nn.silu(matmul(xs, gate, sizes)) * matmul(xs, up, sizes)
    out = matmul(h, down, sizes)
    flat = ids.reshape(-1)[order]
    w = jnp.where(flat < num_experts, weights.reshape(-1)[order], 0).astype(out.dtype)
    return jnp.zeros_like(x).at[token_of].add(out * w[:, None])


def ragged_dot(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    return jax.lax.ragged_dot(lhs, rhs, group_sizes)


def target_gmm() -> Matmul:
    """`grouped_matmul` with the implementation for the compile target (or the active hooks' `gmm_impl`)."""
    impl = getattr(active(), "gmm_impl", None) or default_impl(target_platform())
    return lambda lhs, rhs, sizes: grouped_matmul(lhs, rhs, sizes, impl)


def _expert_ffn_ragged(x, routing, gate, up, down):
    return grouped_ffn(x, routing.weights, routing.ids, gate, up, down, ragged_dot)


def _expert_ffn_gmm(x, routing, gate, up, down):
    return grouped_ffn(x, routing.weights, routing.ids, gate, up, down, target_gmm())


def block_size(n_pairs: int, num_experts: int, largest: int = 128) -> int:
    """Rows per block: the power of two nearest below the mean group size, within [8, largest]
    (few tokens, as in decoding, would otherwise be mostly padding)."""
    mean = max(n_pairs // max(num_experts, 1), 1)
    return int(min(largest, max(8, 1 << (mean.bit_length() - 1))))


def _expert_ffn_blocked(x, routing, gate, up, down):
    num_experts = gate.shape[0]
    n_pairs = routing.ids.size
    block = block_size(n_pairs, num_experts)
    order, token_of, group_sizes = _sort_by_expert(routing, num_experts)
    # Each expert's group starts at a block boundary; worst case adds (block - 1) per expert.
    padded_sizes = (group_sizes + block - 1) // block * block
    padded_starts = jnp.cumsum(padded_sizes) - padded_sizes
    starts = jnp.cumsum(group_sizes) - group_sizes
    sorted_ids = routing.ids.reshape(-1)[order]
    dest = padded_starts[sorted_ids] + (jnp.arange(n_pairs) - starts[sorted_ids])
    num_blocks = (n_pairs + num_experts * (block - 1)) // block + 1
    capacity = num_blocks * block
    xs = jnp.zeros((capacity, x.shape[1]), x.dtype).at[dest].set(x[token_of])
    block_expert = jnp.searchsorted(jnp.cumsum(padded_sizes), jnp.arange(num_blocks) * block, side="right")
    block_expert = jnp.minimum(block_expert, num_experts - 1)
    xb = xs.reshape(num_blocks, block, -1)
    h = jax.nn.silu(block_matmul(xb, gate, block_expert)) * block_matmul(xb, up, block_expert)
    out = block_matmul(h, down, block_expert).reshape(capacity, -1)[dest]
    out = out * routing.weights.reshape(-1)[order][:, None]
    return jnp.zeros_like(x).at[token_of].add(out)


CAPACITY_FACTOR = 4.0


def capacity(n_pairs: int, num_experts: int, factor: float = CAPACITY_FACTOR) -> int:
    """Buffer rows per expert for the `capacity` backend: `factor` x the mean group (N*k/E),
    rounded up to a power of two (bounded compiles), at least 4."""
    mean = factor * n_pairs / max(num_experts, 1)
    return max(4, 1 << max(int(-(-mean // 1)) - 1, 0).bit_length())


def _expert_ffn_capacity(x, routing, gate, up, down):
    n, top_k = routing.ids.shape
    num_experts = gate.shape[0]
    cap = capacity(n * top_k, num_experts)
    if cap >= n:  # a buffer as large as every token on every expert: dense is no more work
        return _expert_ffn_dense(x, routing, gate, up, down)
    flat = routing.ids.reshape(-1)
    onehot = (flat[:, None] == jnp.arange(num_experts)[None, :]).astype(jnp.int32)   # [N*k, E]
    rank = jnp.take_along_axis(jnp.cumsum(onehot, axis=0) - 1, flat[:, None], axis=1)[:, 0]
    counts = jnp.sum(onehot, axis=0)

    def fits():
        token_of = jnp.arange(n * top_k) // top_k
        buf = jnp.zeros((num_experts, cap, x.shape[1]), x.dtype).at[flat, rank].set(x[token_of])
        h = jax.nn.silu(jnp.einsum("ech,ehi->eci", buf, gate)) * jnp.einsum("ech,ehi->eci", buf, up)
        out = jnp.einsum("eci,eih->ech", h, down)[flat, rank].reshape(n, top_k, -1)
        return jnp.einsum("nk,nkh->nh", routing.weights, out)

    return jax.lax.cond(jnp.max(counts) <= cap, fits,
                        lambda: _expert_ffn_dense(x, routing, gate, up, down))


BACKENDS: dict[str, Callable] = {
    "dense": _expert_ffn_dense,
    "ragged": _expert_ffn_ragged,
    "blocked": _expert_ffn_blocked,
    "gmm": _expert_ffn_gmm,
    "sparse": _expert_ffn_sparse,
    "capacity": _expert_ffn_capacity,
}


def auto_backend(platform: str) -> str:
    """The backend `auto` means for a compile target: `gmm` on TPU (megablox kernels, forward and
    backward sparse) and on GPU with tokamax installed (its grouped-matmul kernels; without them
    XLA:GPU runs a ragged dot densely), `blocked` otherwise (fastest measured on CPU, bench/moe_block.py)."""
    if platform == "tpu" or (platform == "gpu" and tokamax_available()):
        return "gmm"
    return "blocked"


def resolve_backend(backend: str) -> str:
    """`auto` -> `auto_backend` of the compile target; other names are checked."""
    if backend == "auto":
        return auto_backend(target_platform())
    if backend not in BACKENDS:
        raise ValueError(f"unknown moe_backend {backend!r}; allowed: {['auto'] + sorted(BACKENDS)}")
    return backend


class MoEStats(NamedTuple):
    """Per-layer router statistics: tokens per expert [E] (valid tokens only), Switch aux loss."""

    expert_load: jax.Array
    aux_loss: jax.Array


def moe_block(x: jax.Array, router: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array, *,
              top_k: int, norm_topk_prob: bool, backend: str = "ragged",
              token_mask: jax.Array | None = None,
              forced_ids: jax.Array | None = None,
              router_dtype: str = "compute") -> tuple[jax.Array, jax.Array, MoEStats]:
    """Sparse MoE on x [N, H] with stacked experts gate/up [E, H, I], down [E, I, H].

    Returns (y [N, H], expert ids [N, k], stats).
    """
    backend = resolve_backend(backend)
    routing = route(x, router, top_k, norm_topk_prob, forced_ids, gate_dtype=router_dtype)
    ffn = expert_ffn(backend, BACKENDS[backend])  # expert parallelism when sharding hooks are active
    y = ffn(x, routing, gate.astype(x.dtype), up.astype(x.dtype), down.astype(x.dtype))
    num_experts = gate.shape[0]
    valid = jnp.ones(x.shape[0], jnp.float32) if token_mask is None else token_mask.astype(jnp.float32)
    load = jnp.zeros(num_experts, jnp.float32).at[routing.ids].add(
        jnp.broadcast_to(valid[:, None], routing.ids.shape))
    n_valid = jnp.maximum(jnp.sum(valid), 1.0)
    mean_prob = jnp.sum(routing.probs * valid[:, None], axis=0) / n_valid
    aux = num_experts * jnp.sum((load / n_valid) * mean_prob)
    return y, routing.ids, MoEStats(load, aux)
