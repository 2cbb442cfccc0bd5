"""GRPO learning pieces: advantage estimators, policy losses, chunked logprobs."""

from .advantages import ADVANTAGE_ESTIMATORS, compute_advantages, register_advantage_estimator
from .config import LossConfig
from .logprobs import chunked_logprobs, naive_logprobs
from .losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    add_terms,
    finalize_terms,
    loss_count,
    policy_loss,
    policy_loss_terms,
    register_aggregation,
    register_kl_estimator,
    register_policy_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "LossConfig",
    "add_terms",
    "chunked_logprobs",
    "compute_advantages",
    "finalize_terms",
    "loss_count",
    "naive_logprobs",
    "policy_loss",
    "policy_loss_terms",
    "register_advantage_estimator",
    "register_aggregation",
    "register_kl_estimator",
    "register_policy_loss",
]
