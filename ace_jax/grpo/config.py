"""``LossConfig``: the GRPO update's loss and advantage settings, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .advantages import ADVANTAGE_ESTIMATORS
from .losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES


@dataclass(frozen=True)
class LossConfig:
    """Loss and advantage settings (defaults: acegrpo.md, "GRPO update").

    An unknown key (``from_dict``) or a bad value raises ValueError naming the key and the
    allowed values. Frozen and hashable, so it can be a static argument of ``jax.jit``.
    """

    loss: str = "ppo"  # POLICY_LOSSES
    eps_low: float = 0.2
    eps_high: float = 0.28
    gspo_eps_low: float = 3e-4
    gspo_eps_high: float = 4e-4
    agg: str = "token-mean"  # AGGREGATIONS
    max_new_tokens: int | None = None  # Dr.GRPO's divisor; required for seq-mean-token-sum-norm
    kl_coef: float = 0.0  # 0 = no KL term (no reference forward pass needed)
    kl_estimator: str = "k2"  # KL_ESTIMATORS
    use_tis: bool = True  # truncated IS against rollout logprobs, when they are given
    tis_cap: float = 2.0
    advantage: str = "grpo"  # ADVANTAGE_ESTIMATORS
    adv_ddof: int = 1
    adv_std_eps: float = 1e-6
    zero_var_threshold: float = 1e-6

    def __post_init__(self) -> None:
        _choice("loss", self.loss, POLICY_LOSSES)
        _choice("agg", self.agg, AGGREGATIONS)
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("advantage", self.advantage, ADVANTAGE_ESTIMATORS)
        _number("eps_low", self.eps_low, lo=0.0, hi=1.0, hi_open=True)
        _number("eps_high", self.eps_high, lo=0.0)
        _number("gspo_eps_low", self.gspo_eps_low, lo=0.0, hi=1.0, hi_open=True)
        _number("gspo_eps_high", self.gspo_eps_high, lo=0.0)
        _number("kl_coef", self.kl_coef, lo=0.0)
        _number("tis_cap", self.tis_cap, lo=0.0, lo_open=True)
        _number("adv_std_eps", self.adv_std_eps, lo=0.0)
        _number("zero_var_threshold", self.zero_var_threshold, lo=0.0)
        if not isinstance(self.use_tis, bool):
            raise ValueError(f"use_tis must be true or false, got {self.use_tis!r}")
        if self.adv_ddof not in (0, 1) or isinstance(self.adv_ddof, bool):
            raise ValueError(f"adv_ddof must be 0 or 1, got {self.adv_ddof!r}")
        m = self.max_new_tokens
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m <= 0):
            raise ValueError(f"max_new_tokens must be a positive integer or None, got {m!r}")
        if self.agg == "seq-mean-token-sum-norm" and m is None:
            raise ValueError("max_new_tokens must be set when agg is 'seq-mean-token-sum-norm'")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LossConfig":
        """Build from a mapping (YAML / ``key=value`` overrides); numeric strings are coerced."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown LossConfig key(s) {unknown}; allowed: {sorted(fields)}")
        return cls(**{k: _coerce(k, v, fields[k].type) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "LossConfig":
        return dataclasses.replace(self, **changes)


def _choice(key: str, value: Any, allowed: Mapping[str, Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; allowed: {sorted(allowed)}")


def _number(key, value, *, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    left, right = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
    rng = f"{left}{lo}, {'inf' if hi is None else hi}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number in {rng}, got {value!r}")
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        raise ValueError(f"{key}={value!r} is out of range; allowed: {rng}")


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Strings from YAML (``3e-4`` stays a string there) or the CLI -> the field's type."""
    if not isinstance(value, str):
        return value
    t = str(type_name)
    try:
        if t == "float":
            return float(value)
        if t.startswith("int"):
            return None if value.lower() in ("none", "null") else int(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a valid {t}") from None
    if t == "bool":
        low = value.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{key}={value!r} is not allowed; allowed: true, false")
    return value
