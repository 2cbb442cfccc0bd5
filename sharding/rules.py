"""Logical-axis rules: logical names on parameters and activations -> mesh axes.

A rule maps one logical name (`embed`, `vocab`, ..., `batch`, `seq`) to a mesh axis, a list of
mesh axes, or nothing (replicated). Resolving a tensor's logical axes against a mesh:
- dimensions are taken in order; a mesh axis already used by an earlier dimension is skipped
  (so activations [batch, seq, embed] under FSDP shard `batch`, not `embed`, over `fsdp`);
- mesh axes of size 1 are dropped;
- mesh axes whose size does not divide the dimension are dropped and replicated *by rule*,
  with a logged note (e.g. 4 KV heads over a tensor axis of 8).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sharding.bit_gather import gather_weight
from sharding.mesh import MESH_AXES

log = logging.getLogger(__name__)

PARAM_AXES = ("embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "experts", "layers")
ACTIVATION_AXES = ("batch", "seq")
LOGICAL_AXES: tuple[str, ...] = PARAM_AXES + ACTIVATION_AXES

_LOGGED: set[str] = set()


class RulesError(ValueError):
    """Rules that name an unknown logical axis or a missing mesh axis."""


@dataclasses.dataclass(frozen=True)
class Rules:
    """Validated mapping logical axis -> tuple of mesh axes (empty tuple = replicated)."""

    table: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def from_mapping(cls, rules: Mapping[str, Any], where: str = "rules",
                     mesh_axes: Sequence[str] = MESH_AXES) -> "Rules":
        table = []
        for name, target in rules.items():
            if name not in LOGICAL_AXES:
                raise RulesError(f"{where}: unknown logical axis {name!r}; known: {list(LOGICAL_AXES)}")
            if target is None or target == "none":
                axes: tuple[str, ...] = ()
            elif isinstance(target, str):
                axes = (target,)
            elif isinstance(target, (list, tuple)) and all(isinstance(a, str) for a in target):
                axes = tuple(target)
            else:
                raise RulesError(f"{where}: rule {name!r} must be a mesh axis, a list of mesh axes or null, "
                                 f"got {target!r}")
            for axis in axes:
                if axis not in mesh_axes:
                    raise RulesError(f"{where}: rule {name!r} names mesh axis {axis!r}, which is not a mesh "
                                     f"axis; mesh axes are {list(mesh_axes)}")
            if len(set(axes)) != len(axes):
                raise RulesError(f"{where}: rule {name!r} repeats a mesh axis: {list(axes)}")
            table.append((name, axes))
        return cls(tuple(table))

    def get(self, name: str) -> tuple[str, ...]:
        return dict(self.table).get(name, ())

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(axes) for name, axes in self.table}


def as_rules(rules: Rules | Mapping[str, Any] | str | None) -> Rules:
    """Rules from a Rules, a mapping, a mesh-config preset name / path, or None (the `fsdp` preset)."""
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, Mapping):
        return Rules.from_mapping(rules)
    from sharding.mesh import load_mesh_config

    cfg = load_mesh_config("fsdp" if rules is None else rules)
    return Rules.from_mapping(cfg.rules, where=f"mesh config {cfg.name}")


def _mesh_shape(mesh) -> dict[str, int]:
    return dict(mesh.shape)


def resolve(logical_axes: Sequence[str | None], shape: Sequence[int], mesh,
            rules: Rules) -> tuple[PartitionSpec, list[str]]:
    """PartitionSpec for one tensor, plus notes on mesh axes replicated because they do not divide."""
    if len(logical_axes) != len(shape):
        raise RulesError(f"logical axes {tuple(logical_axes)} and shape {tuple(shape)} differ in rank")
    sizes = _mesh_shape(mesh)
    used: set[str] = set()
    spec, notes = [], []
    for name, dim in zip(logical_axes, shape):
        if name is not None and name not in LOGICAL_AXES:
            raise RulesError(f"unknown logical axis {name!r}; known: {list(LOGICAL_AXES)}")
        chosen: list[str] = []
        for axis in rules.get(name) if name else ():
            if axis not in sizes:
                raise RulesError(f"rule {name!r} names mesh axis {axis!r}, which the mesh does not have "
                                 f"(mesh axes: {list(sizes)})")
            if axis in used or sizes[axis] == 1:
                continue
            if dim % (math.prod(sizes[a] for a in chosen) * sizes[axis]):
                notes.append(f"{name} ({dim}) not divisible by {axis} ({sizes[axis]}"
                             + (f" after {'x'.join(chosen)}" if chosen else "") + "): replicated over "
                             f"{axis} by rule")
                continue
            chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec), notes


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh, rules) -> PartitionSpec:
    """PartitionSpec for one tensor; axes that do not divide are replicated and logged once."""
    spec, notes = resolve(logical_axes, shape, mesh, as_rules(rules))
    for note in notes:
        if note not in _LOGGED:
            _LOGGED.add(note)
            log.warning("sharding rule: %s", note)
    return spec


def sharding_fn(mesh, rules) -> Callable[[Sequence[str], Sequence[int]], NamedSharding]:
    """`fn(logical_axes, shape) -> NamedSharding` on `mesh` (used by `hf.load(mesh=, rules=)`)."""
    rules = as_rules(rules)

    def fn(logical_axes: Sequence[str], shape: Sequence[int]) -> NamedSharding:
        return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))

    return fn


def _is_variable(x: Any) -> bool:
    return hasattr(x, "get_metadata") and hasattr(x, "replace")


def _axes_of(var: Any) -> tuple[str, ...]:
    axes = var.get_metadata().get("logical_axes")
    if axes is None:
        raise RulesError(f"variable {type(var).__name__} of shape {tuple(var.shape)} has no 'logical_axes' metadata")
    return tuple(axes)


def state_shardings(state: Any, mesh, rules) -> Any:
    """Pytree like an nnx.State (same structure) with each Variable's value replaced by its
    NamedSharding, read from the Variable's `logical_axes` metadata."""
    fn = sharding_fn(mesh, rules)
    return jax.tree.map(lambda v: v.replace(fn(_axes_of(v), v.shape)), state, is_leaf=_is_variable)


def state_specs(state: Any, mesh, rules) -> dict[tuple, tuple[tuple[str, ...], PartitionSpec]]:
    """{path: (logical axes, PartitionSpec)} for every Variable of an (abstract) nnx.State."""
    rules = as_rules(rules)
    out = {}
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]
    for path, var in leaves:
        axes = _axes_of(var)
        out[jax.tree_util.keystr(path)] = (axes, logical_to_spec(axes, var.shape, mesh, rules))
    return out


def sharding_mismatches(state: Any, mesh, rules) -> list[str]:
    """Variables of a concrete state whose array sharding differs from what the rules say
    (empty when every parameter is laid out as specified)."""
    rules = as_rules(rules)
    bad = []
    leaves = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]
    for path, var in leaves:
        expected = NamedSharding(mesh, logical_to_spec(_axes_of(var), var.shape, mesh, rules))
        actual = var[...].sharding
        if not actual.is_equivalent_to(expected, len(var.shape)):
            bad.append(f"{jax.tree_util.keystr(path)}: {getattr(actual, 'spec', actual)} != {expected.spec}")
    return bad


def replication_notes(state: Any, mesh, rules) -> list[str]:
    """Every 'replicated by rule' note for the Variables of a state (for reports)."""
    rules = as_rules(rules)
    notes: list[str] = []
    for var in jax.tree.leaves(state, is_leaf=_is_variable):
        for note in resolve(_axes_of(var), var.shape, mesh, rules)[1]:
            if note not in notes:
                notes.append(note)
    return notes


def batch_spec(mesh, rules, shape: Sequence[int], axes: Iterable[str | None] = ("batch", "seq")) -> PartitionSpec:
    """PartitionSpec of a trainer batch array [batch, seq, ...] (extra dims replicated)."""
    axes = tuple(axes)
    names = axes + (None,) * (len(shape) - len(axes))
    return logical_to_spec(names[:len(shape)], shape, mesh, rules)


def batch_sharding(mesh, rules, shape: Sequence[int],
                   axes: Iterable[str | None] = ("batch", "seq")) -> NamedSharding:
    """NamedSharding of a trainer batch array [batch, seq, ...] over the batch rule's axes (data, fsdp, ...)."""
    return NamedSharding(mesh, batch_spec(mesh, rules, shape, axes))


def shard_batch(batch: Any, mesh, rules) -> Any:
    """Place a pytree of host arrays [batch, seq, ...] on the mesh with batch sharding. On several
    hosts each process passes its own rows (the global batch is the processes' rows in order)."""
    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(batch_sharding(mesh, rules, global_shape), x, global_shape)
    return jax.tree.map(put, batch)


def activation_constrainer(mesh, rules) -> Callable[[jax.Array, Sequence[str | None]], jax.Array]:
    """`fn(x, logical_axes)`: `with_sharding_constraint` of an activation to the rules' layout."""
    rules = as_rules(rules)

    def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
        spec = logical_to_spec(logical_axes, x.shape, mesh, rules)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return constrain


STORAGE_AXIS = "embed"   # the logical axis whose mesh axes shard weights for storage only (FSDP)


def weight_gatherer(mesh, rules) -> Callable[..., jax.Array]:
    """`fn(w, logical_axes, dtype=None)`: weight `w`, stored sharded by the rules, cast to `dtype`
    and resharded to its compute layout (the mesh axes of its `embed` dimension gathered; expert
    and tensor axes kept), with 16-bit floats gathered as integers and the gradient
    reduce-scattered (`sharding.bit_gather`)."""
    rules = as_rules(rules)

    def gather(w: jax.Array, logical_axes: Sequence[str | None], dtype: Any = None) -> jax.Array:
        stored = logical_to_spec(logical_axes, w.shape, mesh, rules)
        entries = tuple(stored) + (None,) * (w.ndim - len(stored))
        storage = {a for name, entry in zip(logical_axes, entries) if name == STORAGE_AXIS for a in _entry_axes(entry)}
        used = PartitionSpec(*(_without(entry, storage) for entry in entries))
        if not storage:
            return w if dtype is None else w.astype(dtype)
        return gather_weight(w, NamedSharding(mesh, stored), NamedSharding(mesh, used), dtype)

    return gather


def _entry_axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _without(entry: Any, axes: set[str]) -> Any:
    """A PartitionSpec entry less the mesh `axes`."""
    kept = tuple(a for a in _entry_axes(entry) if a not in axes)
    return None if not kept else kept[0] if len(kept) == 1 else kept
