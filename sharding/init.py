"""Sharded initialization and abstract (never allocated) sharded states.

`sharded_init(init_fn, mesh, rules)` runs `init_fn` (which returns an nnx.State, e.g.
`lambda: nnx.split(Model(cfg, rngs=nnx.Rngs(0)))[1]`) under `jax.jit` with `out_shardings` from
each Variable's `logical_axes`, so every device creates only its own shard.
`abstract_state(init_fn, mesh, rules)` gives the same tree of `ShapeDtypeStruct`s with shardings
for ahead-of-time compilation (the planner).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import NamedSharding, PartitionSpec

from sharding.rules import _is_variable, state_shardings


def sharded_init(init_fn: Callable[[], Any], mesh, rules) -> Any:
    """Call `init_fn()` under jit with out_shardings from the rules; returns the sharded state."""
    shardings = state_shardings(jax.eval_shape(init_fn), mesh, rules)
    return jax.jit(init_fn, out_shardings=shardings)()


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Attach shardings to a tree of ShapeDtypeStruct (Variables kept, their values replaced)."""
    def attach(a, s):
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    return jax.tree.map(attach, abstract, shardings)


def abstract_state(init_fn: Callable[[], Any], mesh, rules) -> Any:
    """`jax.eval_shape(init_fn)` with each leaf's sharding from the rules (nothing allocated)."""
    abstract = jax.eval_shape(init_fn)
    return with_shardings(abstract, state_shardings(abstract, mesh, rules))


def optimizer_shardings(tx, abstract_opt_state: Any, param_shardings: Any, mesh) -> Any:
    """Shardings for an optax state: parameter-shaped subtrees follow the parameters' shardings,
    every other leaf (step counts, scalars) is replicated."""
    import optax

    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, abstract_opt_state, param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, (jax.ShapeDtypeStruct, NamedSharding)) or _is_variable(x))


def abstract_optimizer_state(tx, abstract_params: Any, mesh) -> Any:
    """`tx.init` evaluated abstractly on sharded abstract params, with shardings attached."""
    opt = jax.eval_shape(tx.init, abstract_params)
    shardings = optimizer_shardings(tx, opt, jax.tree.map(lambda a: a.sharding, abstract_params), mesh)
    return with_shardings(opt, shardings)
