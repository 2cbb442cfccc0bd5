"""Whether a policy answers each task its own way: the greedy drafts of an ablation run's fixed
evaluation, over all its tasks (held-out and training roots).

A policy that learned one answer for every task has one distinct draft and gives it to every
task; the gain such a policy makes needs no task-conditional choice, so a curriculum that picks
which states to train on has little to add (session 9: 24 of 24 runs ended on one of three specs).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ace_jax.train.heldout import spread

_SETS = ("heldout", "roots")


def greedy_drafts(point: dict[str, Any]) -> dict[str, str | None] | None:
    """Task -> the greedy draft at this evaluation point (None: not valid); None for points
    saved before drafts were recorded."""
    drafts: dict[str, str | None] = {}
    for name in _SETS:
        for task, row in point["eval"][name].get("per_task_greedy", {}).items():
            if "draft" not in row:
                return None
            drafts[f"{name}/{task}"] = row["draft"]
    return drafts or None


def answer_spread(point: dict[str, Any]) -> dict[str, float]:
    """`distinct`: distinct valid greedy drafts; `modal_share`: the share of tasks given the most
    common one; `tasks`: how many tasks (NaN throughout for points without drafts)."""
    drafts = greedy_drafts(point)
    if drafts is None:
        return {"distinct": float("nan"), "modal_share": float("nan"), "tasks": float("nan")}
    valid = Counter(d for d in drafts.values() if d is not None)
    return {"distinct": float(len(valid)), "modal_share": max(valid.values(), default=0) / len(drafts),
            "tasks": float(len(drafts))}


def modal_draft(points: list[dict[str, Any]]) -> str | None:
    """The most common valid greedy draft over the given points' tasks."""
    counts: Counter = Counter()
    for p in points:
        counts.update(d for d in (greedy_drafts(p) or {}).values() if d is not None)
    return counts.most_common(1)[0][0] if counts else None


def answers_summary(runs: list[list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Per arm (its runs' points): distinct drafts at step 0 and at the end, the share of tasks
    given the most common draft at the end (mean and spread over runs), and that draft; None
    when the points hold no drafts."""
    if any(greedy_drafts(r[-1]) is None for r in runs):   # saved before drafts were recorded
        return None
    first, last = [answer_spread(r[0]) for r in runs], [answer_spread(r[-1]) for r in runs]
    return {"tasks": int(last[0]["tasks"]), "distinct_first": spread([a["distinct"] for a in first]),
            "distinct_last": spread([a["distinct"] for a in last]),
            "modal_share_last": spread([a["modal_share"] for a in last]),
            "modal_draft": modal_draft([r[-1] for r in runs])}


def answers_lines(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """A table of each arm's `answers` summary (none when no arm has one)."""
    rows = {arm: s["answers"] for arm, s in summaries.items() if s.get("answers")}
    if not rows:
        return []
    tasks = next(iter(rows.values()))["tasks"]
    lines = ["", f"Answers: the distinct valid greedy drafts over the fixed evaluation's {tasks} tasks (a policy that "
             "writes one answer whatever the task has 1, given to every task), and the share of tasks given the "
             "most common one at the end:", "",
             "| arm | distinct drafts, step 0 -> end | share of tasks given the most common | most common draft |",
             "|---|---|---|---|"]
    for arm, a in rows.items():
        lines.append(f"| {arm} | {a['distinct_first']['mean']:.1f} -> {a['distinct_last']['mean']:.1f} ± "
                     f"{a['distinct_last']['std']:.1f} | {a['modal_share_last']['mean']:.2f} ± "
                     f"{a['modal_share_last']['std']:.2f} | `{a['modal_draft'] or '-'}` |")
    return lines
