"""The analytic minimum collective traffic of an FSDP + expert-parallel update step, per device.

Counted the way `sharding.collectives` counts compiled traffic (ring bytes a device sends):
- weight all-gathers: every parameter gathered (in the compute dtype) over the mesh axes that
  shard it, except an expert weight's expert axes (expert parallelism keeps experts local): a
  layer's weights once per forward pass (`forward_passes`: 2 with rematerialization, the forward
  and its recompute), the LM head and final norm once per step (outside the remat'd layers);
- gradient reduce-scatter: the same gathers transposed, once, in the compute dtype (the
  partitioner reduces the per-device partial products at the matmul, before the cast to the
  parameter dtype);
- embedding lookup: the table is read by row, not gathered: each token's row in and its
  gradient out, (n - 1) / n of a row each;
- expert token exchange: per MoE layer, the tokens all-gathered over the expert axes and the
  outputs reduce-scattered back (`ring` scheme) in the forward, the gather again in each
  recompute (its scatter's output is not needed there), and both transposed in the backward:
  forward_passes + 3 exchanges of (ep - 1) x local tokens x hidden.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ExpertExchange:
    """The expert layers' token traffic inputs: layers, local tokens per device, hidden size, bytes."""

    moe_layers: int
    tokens: int
    hidden: int
    act_bytes: int
    ep: int


def _axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def gather_group(leaf: Any, mesh_shape: dict[str, int], ep_axes: Sequence[str], num_experts: int | None) -> int:
    """Devices a parameter is gathered over: its sharded axes, less the expert axes of its expert dim."""
    spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
    axes: list[str] = []
    for dim, entry in zip(leaf.shape, spec):
        names = _axes(entry)
        if num_experts and dim == num_experts and names and set(names) <= set(ep_axes):
            continue
        axes += names
    return math.prod(mesh_shape[a] for a in axes)


def minimum_traffic(params: Any, mesh, *, compute_bytes: int, ep_axes: Sequence[str] = (),
                    num_experts: int | None = None, forward_passes: int = 2,
                    exchange: ExpertExchange | None = None, tokens: int = 0, layer_stacks: Sequence[str] = ("runs",),
                    lookup_tables: Sequence[str] = ("embed",)) -> dict[str, float]:
    """Bytes per device per step by part, and their `total`. Top-level parameters are named by
    their first key: those under `layer_stacks` are gathered once per forward pass, the others
    (LM head, final norm) once per step; a table in `lookup_tables` is not gathered but read by
    row (`embedding lookup`: the rows of the device's `tokens` in, their gradients out)."""
    sizes = {k: int(v) for k, v in mesh.shape.items()}
    gather = reduce = lookup = 0.0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        n = gather_group(leaf, sizes, ep_axes, num_experts)
        top = _first_key(path)
        if top in lookup_tables:
            lookup += 2 * (n - 1) / n * tokens * leaf.shape[-1] * compute_bytes
            continue
        local = math.prod(leaf.sharding.shard_shape(leaf.shape))  # a gather over n receives (n - 1) x this
        gather += local * (n - 1) * compute_bytes * (forward_passes if top in layer_stacks else 1)
        reduce += local * (n - 1) * compute_bytes
    out = {"weight all-gather": gather, "gradient reduce-scatter": reduce}
    if lookup:
        out["embedding lookup"] = lookup
    if exchange and exchange.ep > 1:
        per_op = (exchange.ep - 1) * exchange.tokens * exchange.hidden * exchange.act_bytes
        # forward: gather + scatter; each recompute: the gather (its output is not needed);
        # backward: the transposes, scatter + gather
        out["expert token exchange"] = float(per_op * exchange.moe_layers * (forward_passes + 3))
    out["total"] = float(sum(out.values()))
    return out


def _first_key(path) -> str:
    key = path[0] if path else None
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)
