"""Train state: params (nnx.State of the model's Params), optimizer state, step, RNG, counters."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class TrainState(NamedTuple):
    params: nnx.State
    opt_state: Any
    step: jax.Array            # int32 [], optimizer steps taken
    rng: jax.Array             # uint32 [2], raw key data (checkpoint-friendly)
    skipped: jax.Array         # int32 [], updates skipped for non-finite loss or grads
    ref_params: nnx.State | None = None   # frozen reference policy, only when KL is on


def create_train_state(model: nnx.Module, optimizer: optax.GradientTransformation, *, seed: int = 0,
                       with_reference: bool = False) -> tuple[nnx.GraphDef, TrainState]:
    """Split `model` into its graph and a fresh train state (the reference is a copy of params)."""
    graphdef, params = nnx.split(model, nnx.Param)
    ref = jax.tree.map(jnp.copy, params) if with_reference else None
    state = TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32),
                       rng=jax.random.key_data(jax.random.PRNGKey(seed)), skipped=jnp.zeros((), jnp.int32),
                       ref_params=ref)
    return graphdef, state


def abstract_train_state(model_factory, optimizer: optax.GradientTransformation, *, seed: int = 0,
                         with_reference: bool = False) -> tuple[nnx.GraphDef, TrainState]:
    """Shapes and dtypes of the train state without allocating it (for restore and planning)."""
    out = {}

    def build():
        graphdef, state = create_train_state(model_factory(), optimizer, seed=seed, with_reference=with_reference)
        out["graphdef"] = graphdef
        return state

    state = jax.eval_shape(build)
    return out["graphdef"], state
