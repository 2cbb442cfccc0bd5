"""Medal thresholds from a leaderboard, by Kaggle's rules as MLE-bench applies them.

N teams: N < 100: gold top 10%, silver top 20%, bronze top 40%; 100-249: gold rank 10,
silver top 20%, bronze top 40%; 250-999: gold rank 10 + 0.2% N, silver rank 50, bronze rank
100; >= 1000: gold rank 10 + 0.2% N, silver top 5%, bronze top 10%. A threshold is the score
of the team at that rank (ranks count from 1; a share of N rounds down, at least rank 1).
"""

from __future__ import annotations

from rollout.env.metrics import aligned


def medal_ranks(n: int) -> dict[str, int]:
    """The last rank that wins each medal on a leaderboard of `n` teams."""
    if n < 1:
        raise ValueError("a leaderboard needs at least one team")

    def share(p: float) -> int:
        return max(1, int(n * p))

    if n < 100:
        ranks = {"gold": share(0.1), "silver": share(0.2), "bronze": share(0.4)}
    elif n < 250:
        ranks = {"gold": 10, "silver": share(0.2), "bronze": share(0.4)}
    elif n < 1000:
        ranks = {"gold": 10 + int(0.002 * n), "silver": 50, "bronze": 100}
    else:
        ranks = {"gold": 10 + int(0.002 * n), "silver": share(0.05), "bronze": share(0.1)}
    return {k: min(v, n) for k, v in ranks.items()}


def medal_thresholds(scores: list[float], direction: str) -> dict[str, float]:
    """The score each medal needs, given every team's score and which way is better."""
    ordered = sorted(scores, key=lambda s: aligned(direction, s), reverse=True)
    return {medal: float(ordered[rank - 1]) for medal, rank in medal_ranks(len(ordered)).items()}
