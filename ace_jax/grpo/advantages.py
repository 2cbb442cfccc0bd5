"""Group-relative advantage estimators, selected by name.

Rewards come shaped ``[groups, G]`` (G rollouts of one state per row). Every estimator maps
that to advantages of the same shape. Groups whose reward std is below ``zero_var_threshold``
carry no learning signal: they keep their row (shapes never change) but get advantage 0 and
``group_mask`` False, and their number is reported.

Works on NumPy arrays (the host-side path, before batching) and on jax arrays alike: the
array module is chosen from the input.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

AdvantageFn = Callable[..., Any]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register ``fn(rewards, xp, *, ddof, std_eps) -> advantages`` under ``name``."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


@register_advantage_estimator("grpo")
def _grpo(r, xp, *, ddof: int, std_eps: float):
    """(r - mean) / (std + std_eps), std with the given ddof."""
    mean = r.mean(axis=1, keepdims=True)
    std = xp.std(r, axis=1, keepdims=True, ddof=ddof)
    return (r - mean) / (std + std_eps)


@register_advantage_estimator("dr_grpo")
def _dr_grpo(r, xp, *, ddof: int, std_eps: float):
    """r - mean (Dr.GRPO: no std normalization)."""
    return r - r.mean(axis=1, keepdims=True)


@register_advantage_estimator("rloo")
def _rloo(r, xp, *, ddof: int, std_eps: float):
    """r_i - mean of the other G-1 rewards = G/(G-1) * (r_i - mean)."""
    g = r.shape[1]
    return (r - r.mean(axis=1, keepdims=True)) * (g / (g - 1))


def _array_module(x: Any):
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        return np
    import jax.numpy as jnp  # only when given jax arrays

    return jnp


def compute_advantages(
    rewards: Any,
    estimator: str = "grpo",
    ddof: int = 1,
    std_eps: float = 1e-6,
    zero_var_threshold: float = 1e-6,
) -> tuple[Any, Any, int]:
    """Advantages for rewards ``[groups, G]``.

    Returns ``(advantages [groups, G], group_mask [groups] bool, n_zero_variance)``.
    A group is masked out (advantage 0, mask False) when its reward std (ddof 0) is below
    ``zero_var_threshold``. ``n_zero_variance`` is a Python int for NumPy input and a jax
    scalar for jax input (so that the function stays traceable).
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {estimator!r}; allowed: {sorted(ADVANTAGE_ESTIMATORS)}"
        )
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    xp = _array_module(rewards)
    r = xp.asarray(rewards)
    if not xp.issubdtype(r.dtype, xp.floating):
        r = r.astype(xp.float64 if xp is np else xp.float32)
    if r.ndim != 2:
        raise ValueError(f"rewards must be shaped [groups, G], got shape {tuple(r.shape)}")
    g = r.shape[1]
    min_g = 2 if (estimator == "rloo" or (estimator == "grpo" and ddof == 1)) else 1
    if g < min_g:
        raise ValueError(f"estimator {estimator!r} with ddof={ddof} needs G >= {min_g}, got G={g}")
    if xp is np and not np.all(np.isfinite(r)):
        bad = np.nonzero(~np.all(np.isfinite(r), axis=1))[0]
        raise ValueError(f"rewards contain non-finite values in groups {bad.tolist()}")

    group_mask = xp.std(r, axis=1) >= zero_var_threshold
    adv = ADVANTAGE_ESTIMATORS[estimator](r, xp, ddof=ddof, std_eps=std_eps)
    adv = xp.where(group_mask[:, None], adv, xp.zeros_like(adv))
    n_zero = r.shape[0] - group_mask.sum()
    if xp is np:
        n_zero = int(n_zero)
    return adv, group_mask, n_zero
