"""Expert parallelism: the MoE expert computation with experts sharded over mesh axes (`shard_map`).

`expert_parallel_ffn(mesh, rules, scheme)` returns a drop-in for a MoE backend
`fn(x [N, H], routing, gate [E, H, I], up [E, H, I], down [E, I, H]) -> y [N, H]` where `routing`
has `.weights` [N, k] and `.ids` [N, k] (global expert ids). Routing stays outside (the model's
own router, auto-sharded); only the expert FFN runs per device on its E / ep local experts.

Schemes (both dropless, equal in values and gradients to the single-device block):
- `ring`: all-gather the tokens (and their routing) over the expert axes, run the local experts
  on every gathered token routed to them, reduce-scatter the partial outputs back. When the
  tokens are not sharded over the expert axes, no gather is needed and the outputs are summed.
- `all_to_all`: each device sends every (token, slot) pair to the device that holds its expert
  with one all-to-all and receives the results with another. Buffers have the static worst-case
  capacity (all pairs to one device), so each all-to-all moves ep x the pairs' bytes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ace_jax.models import moe
from sharding import bit_gather
from sharding.rules import as_rules, resolve

SCHEMES = ("ring", "all_to_all")
LOCAL_IMPLS = ("ragged", "gmm", "dense")


def local_expert_ffn(x: jax.Array, weights: jax.Array, local_ids: jax.Array, gate: jax.Array,
                     up: jax.Array, down: jax.Array, impl: str = "ragged") -> jax.Array:
    """SwiGLU experts on the rows of x [M, H] routed (ids [M, k] in 0..E_local) to the E_local local
    experts; id E_local marks a pair whose expert lives elsewhere (skipped, weight ignored).
    `impl`: `dense`, `ragged` (jax.lax.ragged_dot) or `gmm` (moe_gmm.grouped_matmul for the target)."""
    e_local = gate.shape[0]
    m, k = local_ids.shape
    if impl == "dense":
        combine = jnp.zeros((m, e_local + 1), x.dtype).at[jnp.arange(m)[:, None], local_ids].add(weights)
        combine = combine[:, :e_local]
        h = jax.nn.silu(jnp.einsum("mh,ehi->mei", x, gate)) * jnp.einsum("mh,ehi->mei", x, up)
        return jnp.einsum("me,meh->mh", combine, jnp.einsum("mei,eih->meh", h, down))
    if impl not in LOCAL_IMPLS:
        raise ValueError(f"unknown local expert impl {impl!r}; allowed: {list(LOCAL_IMPLS)}")
    matmul = moe.ragged_dot if impl == "ragged" else moe.target_gmm()
    return moe.grouped_ffn(x, weights, local_ids, gate, up, down, matmul)


def _axes(spec_entry: Any) -> tuple[str, ...]:
    if spec_entry is None:
        return ()
    return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry)


def _ring(x, weights, ids, gate, up, down, *, ep_axes, gather_axes, sum_axes, impl):
    e_local = gate.shape[0]
    if sum_axes:
        # Tokens are replicated over these axes; mark them varying explicitly so that the backward
        # pass sums their cotangents over the axes (the gathers by varying indices below do not
        # trigger JAX's implicit conversion, which left the token / router gradients per-device).
        x = jax.lax.pcast(x, sum_axes, to="varying")
        weights = jax.lax.pcast(weights, sum_axes, to="varying")
    if gather_axes:   # bf16 moved as integers both ways (bit_gather), the reductions in bf16
        x = bit_gather.all_gather(x, gather_axes)
        weights = bit_gather.all_gather(weights, gather_axes)
        ids = jax.lax.all_gather(ids, gather_axes, axis=0, tiled=True)
    local = ids - jax.lax.axis_index(ep_axes) * e_local
    local = jnp.where((local >= 0) & (local < e_local), local, e_local)
    y = local_expert_ffn(x, weights, local, gate, up, down, impl)
    if gather_axes:
        y = bit_gather.psum_scatter(y, gather_axes)
    if sum_axes:
        y = jax.lax.psum(y, sum_axes)
    return y


def _all_to_all(x, weights, ids, gate, up, down, *, ep_axes, group, impl):
    e_local = gate.shape[0]
    n, k = ids.shape
    dest = (ids // e_local).reshape(-1)                      # [n*k] device (in the group) of each pair
    lid = (ids % e_local).reshape(-1)
    to = jnp.arange(group)[:, None] == dest[None, :]          # [G, n*k]
    pairs = jnp.repeat(x, k, axis=0)                          # [n*k, H]
    send = jnp.where(to[:, :, None], pairs[None], 0)          # [G, n*k, H]
    send_ids = jnp.where(to, lid[None], e_local)
    recv = jax.lax.all_to_all(send, ep_axes, 0, 0, tiled=False)
    recv_ids = jax.lax.all_to_all(send_ids, ep_axes, 0, 0, tiled=False)
    rows = recv.reshape(group * n * k, -1)
    out = local_expert_ffn(rows, jnp.ones((rows.shape[0], 1), x.dtype), recv_ids.reshape(-1, 1),
                           gate, up, down, impl)
    back = jax.lax.all_to_all(out.reshape(group, n * k, -1), ep_axes, 0, 0, tiled=False)
    mine = jnp.take_along_axis(back, dest[None, :, None], axis=0)[0]   # [n*k, H]
    return jnp.sum(mine.reshape(n, k, -1) * weights[:, :, None].astype(mine.dtype), axis=1)


def expert_parallel_ffn(mesh, rules, scheme: str = "ring",
                        local_impl: Callable[[str], str] | str | None = None) -> Callable[..., Callable]:
    """`hook(backend, default) -> ffn`: expert FFN sharded over the mesh axes of the `experts` rule.

    Falls back to `default` when the experts are not sharded (rule empty, axes of size 1, or not
    dividing the expert count). The local computation is `dense` for the `dense` backend, `gmm`
    for `gmm` and `ragged` (grouped matmul) otherwise, unless `local_impl` says so.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown expert-parallel scheme {scheme!r}; allowed: {list(SCHEMES)}")
    rules = as_rules(rules)
    sizes = dict(mesh.shape)

    def hook(backend: str, default: Callable) -> Callable:
        impl = local_impl if isinstance(local_impl, str) else (
            local_impl(backend) if local_impl else (backend if backend in ("dense", "gmm") else "ragged"))

        def ffn(x, routing, gate, up, down):
            gate_spec, _ = resolve(("experts", None, None), gate.shape, mesh, rules)
            ep_axes = _axes(gate_spec[0] if len(gate_spec) else None)
            if not ep_axes:
                return default(x, routing, gate, up, down)
            token_spec, _ = resolve(("batch", None), x.shape, mesh, rules)
            token_axes = tuple(a for a in _axes(token_spec[0] if len(token_spec) else None))
            gather_axes = tuple(a for a in ep_axes if a in token_axes)
            sum_axes = tuple(a for a in ep_axes if a not in token_axes)
            tok = P(token_axes or None, None)
            wspec = P(ep_axes, None, None)
            if scheme == "all_to_all" and not sum_axes:
                body = _make(_all_to_all, ep_axes=ep_axes, group=math.prod(sizes[a] for a in ep_axes),
                             impl=impl)
            else:
                body = _make(_ring, ep_axes=ep_axes, gather_axes=gather_axes, sum_axes=sum_axes, impl=impl)
            run = jax.shard_map(body, mesh=mesh, in_specs=(tok, tok, tok, wspec, wspec, wspec), out_specs=tok)
            return run(x, routing.weights, routing.ids, gate, up, down)

        return ffn

    return hook


def _make(fn: Callable, **kw: Any) -> Callable:
    def body(x, weights, ids, gate, up, down):
        return fn(x, weights, ids, gate, up, down, **kw)
    return body


def expert_axes(mesh, rules, num_experts: int) -> Sequence[str]:
    """Mesh axes the experts are sharded over (empty when not sharded)."""
    spec, _ = resolve(("experts",), (num_experts,), mesh, as_rules(rules))
    return _axes(spec[0] if len(spec) else None)
