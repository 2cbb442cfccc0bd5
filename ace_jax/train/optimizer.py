"""Optimizer: AdamW with global-norm clipping and a warmup + cosine schedule (optax)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ace_jax.validation import ConfigMixin


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(ConfigMixin):
    learning_rate: float = 1e-6
    warmup_steps: int = 10
    total_steps: int = 400
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    moments_dtype: str = "float32"   # "bfloat16" halves optimizer memory (8xH100 preset)

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"optimizer key 'learning_rate' must be > 0, got {self.learning_rate}")
        if self.total_steps <= 0 or self.warmup_steps < 0:
            raise ValueError("optimizer keys 'total_steps' must be > 0 and 'warmup_steps' >= 0")
        if self.moments_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"optimizer key 'moments_dtype' is {self.moments_dtype!r}; allowed: ['float32', 'bfloat16']")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else cfg.learning_rate, peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps, decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio)


def scale_by_adam_moments(dtype: str, **kwargs: Any) -> optax.GradientTransformation:
    """Adam scaling with both moments stored in `dtype` (optax's `mu_dtype` covers only the first)."""
    inner = optax.scale_by_adam(mu_dtype=jnp.dtype(dtype), **kwargs)
    if jnp.dtype(dtype) == jnp.float32:
        return inner

    def cast(state):
        return state._replace(nu=jax.tree.map(lambda x: x.astype(dtype), state.nu))

    def update(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        return updates, cast(state)

    return optax.GradientTransformation(lambda params: cast(inner.init(params)), update)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """clip by global norm -> Adam (moments in `moments_dtype`) -> decoupled weight decay -> -lr."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        scale_by_adam_moments(cfg.moments_dtype, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay),
        optax.scale_by_learning_rate(learning_rate_schedule(cfg)),
    )
