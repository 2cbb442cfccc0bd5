"""``CurriculumConfig``: every [ours] choice of the Evolving Data Buffer and the LP sampler.

Defaults follow acegrpo.md ("Evolving Data Buffer", "Learnability Potential and sampling").
Values are checked on creation; ``from_dict`` also rejects unknown keys. Errors name the key
and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ace_jax.validation import check_integer as _integer, check_number as _number, ConfigMixin

from .potentials import POTENTIALS


@dataclass(frozen=True)
class CurriculumConfig(ConfigMixin):
    """Buffer and sampler settings (see acegrpo.md for the meaning of each)."""

    capacity: int = 4096  # fixed number of slots N
    max_depth: int = 8  # children deeper than this are dropped (roots have depth 0)
    max_children: int = 4  # live children per parent, best q first
    discount: float = 0.9  # a, b <- discount * (a, b) before each recorded group is added
    prior_a: float = 1.0  # Beta prior of a new root
    prior_b: float = 1.0
    child_pseudo_counts: float = 2.0  # a child inherits its parent's (a, b) scaled to <= this
    ema_rate: float = 0.1  # weight of a new group in the reward mean/std EMA (1 - discount)
    std_ddof: int = 0  # ddof of the group reward std (EMA and zero-variance test)
    potential: str = "frontier"  # POTENTIALS
    beta: float = 0.5  # frontier: headroom exponent, (1 - q) ** beta
    c: float = 0.1  # frontier: visit bonus c / sqrt(1 + visits)
    tau: float = 0.25  # softmax temperature over LP
    eps: float = 0.05  # uniform floor mass over eligible non-root entries
    root_mix: float = 0.25  # rho: k_root ~ Binomial(k, rho)
    cooldown_groups: int = 3  # this many zero-variance groups in a row start a cool-down
    cooldown_base: int = 20  # a cool-down lasts cooldown_base * 2 ** level steps
    cooldown_max_level: int = 20  # cap on the level j (keeps 2 ** j finite)
    std_eps: float = 1e-6  # a group with reward std below this has zero variance

    def __post_init__(self) -> None:
        _integer("capacity", self.capacity, lo=1)
        _integer("max_depth", self.max_depth, lo=0, hi=30000)
        _integer("max_children", self.max_children, lo=0, hi=30000)
        _number("discount", self.discount, lo=0.0, hi=1.0, lo_open=True)
        _number("prior_a", self.prior_a, lo=0.0, lo_open=True)
        _number("prior_b", self.prior_b, lo=0.0, lo_open=True)
        _number("child_pseudo_counts", self.child_pseudo_counts, lo=0.0, lo_open=True)
        _number("ema_rate", self.ema_rate, lo=0.0, hi=1.0, lo_open=True)
        if self.std_ddof not in (0, 1) or isinstance(self.std_ddof, bool):
            raise ValueError(f"std_ddof must be 0 or 1, got {self.std_ddof!r}; allowed: 0, 1")
        if self.potential not in POTENTIALS:
            raise ValueError(
                f"potential={self.potential!r} is not allowed; allowed: {sorted(POTENTIALS)}"
            )
        _number("beta", self.beta, lo=0.0)
        _number("c", self.c, lo=0.0)
        _number("tau", self.tau, lo=0.0, lo_open=True)
        _number("eps", self.eps, lo=0.0, hi=1.0)
        _number("root_mix", self.root_mix, lo=0.0, hi=1.0)
        _integer("cooldown_groups", self.cooldown_groups, lo=1, hi=100)
        _integer("cooldown_base", self.cooldown_base, lo=0)
        _integer("cooldown_max_level", self.cooldown_max_level, lo=0, hi=40)
        _number("std_eps", self.std_eps, lo=0.0)

