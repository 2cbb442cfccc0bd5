"""The analytic minimum collective traffic of an FSDP + expert-parallel update step, per device.

Counted the way `sharding.collectives` counts compiled traffic (ring bytes a device sends):
- weight all-gathers: every parameter gathered (in the compute dtype) over the mesh axes that
  shard it, except an expert weight's expert axes (expert parallelism keeps experts local), once
  per forward pass (`forward_passes`: 2 with rematerialization, the forward and its recompute);
- gradient reduce-scatter: the same gathers transposed, once, in the parameter dtype;
- expert token exchange: per MoE layer and pass (forward, recompute, backward), the tokens
  all-gathered over the expert axes and the outputs reduce-scattered back (`ring` scheme), or
  the routed pairs sent out and back (`all_to_all`); both move (ep - 1) x local tokens x hidden.
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
                    exchange: ExpertExchange | None = None) -> dict[str, float]:
    """Bytes per device per step by part, and their `total`."""
    sizes = {k: int(v) for k, v in mesh.shape.items()}
    gather = reduce = 0.0
    for leaf in jax.tree.leaves(params):
        n = gather_group(leaf, sizes, ep_axes, num_experts)
        local = math.prod(leaf.sharding.shard_shape(leaf.shape))  # a gather over n receives (n - 1) x this
        gather += local * (n - 1) * compute_bytes
        reduce += local * (n - 1) * np.dtype(leaf.dtype).itemsize
    out = {"weight all-gather": gather * forward_passes, "gradient reduce-scatter": reduce}
    if exchange and exchange.ep > 1:
        per_pass = 2 * (exchange.ep - 1) * exchange.tokens * exchange.hidden * exchange.act_bytes
        out["expert token exchange"] = float(per_pass * exchange.moe_layers * (forward_passes + 1))
    out["total"] = float(sum(out.values()))
    return out
