"""Reward and success, exactly as docs/acegrpo.md "Reward and success" states.

q = clip((m - m_base) / (m_ref - m_base), 0, 1), m sign-aligned (higher is better);
u = clip((q_new - q_parent) / max(1 - q_parent, 0.1), 0, 1), roots have q_parent = 0;
r = 0 if crashed / timed out / invalid, else w_valid + (1 - w_valid) * u;
success = valid and u > 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout.env.metrics import aligned

W_VALID = 0.3
SUCCESS_MARGIN = 0.05


def normalized_score(m: float, m_base: float, m_ref: float, direction: str) -> float:
    """q in [0, 1]: 0 at the trivial baseline, 1 at (or beyond) the reference."""
    base, ref, value = aligned(direction, m_base), aligned(direction, m_ref), aligned(direction, m)
    if ref <= base:
        raise ValueError(f"reference score {m_ref} is not better than the baseline {m_base} ({direction})")
    return min(max((value - base) / (ref - base), 0.0), 1.0)


def improvement(q_new: float, q_parent: float) -> float:
    """u in [0, 1]: the share of the parent's headroom the new solution closes."""
    return min(max((q_new - q_parent) / max(1.0 - q_parent, 0.1), 0.0), 1.0)


@dataclass(frozen=True)
class Reward:
    """The outcome of one step: hidden score, improvement, reward and success."""

    valid: bool
    q: float
    u: float
    reward: float
    success: bool


def step_reward(valid: bool, q_new: float | None, q_parent: float = 0.0, w_valid: float = W_VALID) -> Reward:
    """Reward for a step whose execution was `valid` (ran, valid submission) with score q_new."""
    if not valid or q_new is None:
        return Reward(False, 0.0, 0.0, 0.0, False)
    u = improvement(q_new, q_parent)
    return Reward(True, q_new, u, w_valid + (1.0 - w_valid) * u, u > SUCCESS_MARGIN)
