"""Place a train state and update batches on a mesh by the logical-axis rules.

Parameters (and the reference copy) follow each Variable's `logical_axes`; optimizer moments
follow the parameters; counters and the RNG are replicated. Batches split over the rules'
`batch` axes (data, fsdp, ...)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ace_jax.train.batch import TrainBatch
from ace_jax.train.state import TrainState
from sharding.init import optimizer_shardings
from sharding.rules import batch_sharding, state_shardings


def train_state_sharding(state: TrainState, optimizer: optax.GradientTransformation, mesh, rules) -> TrainState:
    """A TrainState-shaped tree of NamedShardings."""
    params = state_shardings(state.params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(params=params,
                      opt_state=optimizer_shardings(optimizer, state.opt_state, params, mesh),
                      step=replicated, rng=replicated, skipped=replicated,
                      ref_params=None if state.ref_params is None else params)


def batch_sharding_for(batch: TrainBatch, mesh, rules) -> TrainBatch:
    return TrainBatch(*(None if x is None else
                        batch_sharding(mesh, rules, x.shape, (("batch", "seq") + (None,) * x.ndim)[: x.ndim])
                        for x in batch))


def shard(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(jax.device_put, tree, shardings)


def global_from_host(tree: Any, shardings: Any) -> Any:
    """Global arrays from host (NumPy) values that every process holds whole: each device
    takes its own slice, so P processes contribute distinct rows (not P copies)."""
    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(one, tree, shardings)
