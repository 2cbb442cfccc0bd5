"""``LossConfig``: the GRPO update's loss and advantage settings, validated on creation."""

from __future__ import annotations

from dataclasses import dataclass

from ace_jax.validation import check_choice as _choice, check_number as _number, ConfigMixin

from .advantages import ADVANTAGE_ESTIMATORS
from .losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES


OLD_LOGPROBS = ("behaviour", "proximal")


@dataclass(frozen=True)
class LossConfig(ConfigMixin):
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
    # The ratio's "old" policy: "behaviour" = the engine's per-token logprobs (the policy that
    # generated the tokens, possibly S versions stale), so clipping bounds the off-policy step;
    # the ratio pi/pi_behav is then the whole importance weight (staleness and engine mismatch
    # together) and the TIS weight is exp(0) = 1 by construction: a second weight would count
    # the same correction twice. "proximal" = the current parameters before this update (AReaL's
    # decoupled PPO with the proximal policy = the learner's; ratio 1 at one update per batch):
    # the TIS weight min(pi_prox/pi_behav, tis_cap) then carries the off-policy correction.
    old_logprobs: str = "behaviour"  # OLD_LOGPROBS
    routing_replay: bool = True  # R3: force the engine's routed experts in the update (MoE only)

    def __post_init__(self) -> None:
        _choice("loss", self.loss, POLICY_LOSSES)
        _choice("agg", self.agg, AGGREGATIONS)
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("advantage", self.advantage, ADVANTAGE_ESTIMATORS)
        _choice("old_logprobs", self.old_logprobs, OLD_LOGPROBS)
        if not isinstance(self.routing_replay, bool):
            raise ValueError(f"routing_replay must be true or false, got {self.routing_replay!r}")
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

