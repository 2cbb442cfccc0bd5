"""Hooks a model uses while traced on a mesh: activation constraints and expert parallelism.

`model_hooks(mesh, rules, expert_parallel)` returns an object with `constrain(x, logical_axes)`,
`gather_weight(w, logical_axes)` (FSDP weights gathered per use, bf16 as integers) and (when expert parallelism is on) `expert_ffn(backend, default)`; activate it with the model's
hook context (`ace_jax.models.constraints.use(hooks)`) around tracing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from sharding.expert_parallel import expert_parallel_ffn
from sharding.mesh import EXPERT_PARALLEL, MeshConfig
from sharding.rules import Rules, activation_constrainer, as_rules, weight_gatherer


@dataclasses.dataclass(frozen=True)
class ModelHooks:
    mesh: Any
    rules: Rules
    constrain: Callable
    expert_ffn: Callable | None = None
    gmm_impl: str | None = None      # forces the `gmm` backend's kernels (ace_jax.models.moe_gmm.IMPLS)
    gather_weight: Callable | None = None


def model_hooks(mesh, rules, expert_parallel: str = "none", constrain: bool = True,
                local_impl: str | None = None, gmm_impl: str | None = None) -> ModelHooks:
    """Hooks for `mesh` and `rules`; `expert_parallel` in ('none', 'ring', 'all_to_all');
    `local_impl` forces the per-device expert computation ('ragged', 'gmm' or 'dense'), `gmm_impl`
    the grouped-matmul kernels (default: those of the mesh's platform)."""
    if expert_parallel not in EXPERT_PARALLEL:
        raise ValueError(f"expert_parallel is {expert_parallel!r}; allowed: {list(EXPERT_PARALLEL)}")
    rules = as_rules(rules)
    fn = activation_constrainer(mesh, rules) if constrain else (lambda x, axes: x)
    ep = None if expert_parallel == "none" else expert_parallel_ffn(mesh, rules, expert_parallel, local_impl)
    gather = weight_gatherer(mesh, rules) if constrain else None
    return ModelHooks(mesh, rules, fn, ep, gmm_impl, gather)


def hooks_for(cfg: MeshConfig, mesh) -> ModelHooks:
    """Hooks for a mesh config (its rules and expert-parallel scheme)."""
    return model_hooks(mesh, cfg.rules, cfg.expert_parallel)
