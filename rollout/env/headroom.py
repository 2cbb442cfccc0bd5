"""How much headroom a task leaves: the q of its reference specs, of a default spec and of
its medal thresholds, against the tuned reference score (q = 1)."""

from __future__ import annotations

import statistics
from typing import Any, Iterable

from rollout.env.graders import grade_bytes
from rollout.env.metrics import aligned
from rollout.env.reward import normalized_score
from rollout.env.tasks import Task

DEFAULT_SPEC = "model=rf"  # an estimator with its defaults: what a first valid attempt may write


def task_headroom(task: Task, fixed_references: tuple[str, ...], default_spec: str = DEFAULT_SPEC) -> dict[str, Any]:
    """q per fixed reference spec, of `default_spec` (run now, in-process), of each medal, and the best spec."""
    from rollout.env.prepare import run_reference

    c = task.config
    q = lambda score: normalized_score(score, c.baseline_score, c.reference_score, c.direction)  # noqa: E731
    default = grade_bytes(task, run_reference(task, default_spec))
    best = max(c.references, key=lambda s: aligned(c.direction, c.references[s])) if c.references else None
    return {"task": c.id, "split": c.split, "best_spec": best, "leaderboard": len(c.references),
            "references_q": {s: q(c.references[s]) for s in fixed_references if s in c.references},
            "default_q": q(default.score) if default.valid else None,
            "medals_q": {m: q(v) for m, v in c.medals.items()}}


def headroom_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of `task_headroom` rows."""
    out = ["| task | split | q of the 3 reference specs | q of `" + DEFAULT_SPEC + "` | gold / silver / bronze q | "
           "reference (q = 1) |", "|---|---|---|---|---|---|"]
    for r in rows:
        refs = ", ".join(f"{v:.3f}" for v in r["references_q"].values())
        default = "-" if r["default_q"] is None else f"{r['default_q']:.3f}"
        medals = " / ".join(f"{r['medals_q'][m]:.3f}" for m in ("gold", "silver", "bronze"))
        out.append(f"| {r['task']} | {r['split']} | {refs} | {default} | {medals} | `{r['best_spec']}` of "
                   f"{r['leaderboard']} |")
    return "\n".join(out)


def one_spec_for_all(tasks: Iterable[Task], by_kind: bool = False) -> dict[str, dict[str, Any]]:
    """Per split (`by_kind`: per split and task kind, keyed `SPLIT KIND`): the mean q over its
    tasks of every spec on all their leaderboards, the best such spec and the median. A policy
    that writes the best one whatever the task (or whatever the task of that kind: the kind is
    in every prompt) gets its mean q: the part of the gain that needs no task-conditional choice."""
    by_split: dict[str, list[Task]] = {}
    for t in tasks:
        by_split.setdefault(f"{t.config.split} {t.config.kind}" if by_kind else t.config.split, []).append(t)
    out = {}
    for split, group in sorted(by_split.items()):
        common = set.intersection(*(set(t.config.references) for t in group))
        if not common:
            continue
        mean_q = {spec: statistics.fmean(normalized_score(t.config.references[spec], t.config.baseline_score,
                                                          t.config.reference_score, t.config.direction)
                                         for t in group) for spec in sorted(common)}
        best = max(mean_q, key=mean_q.get)
        out[split] = {"tasks": len(group), "specs": len(mean_q), "best_spec": best, "best_q": mean_q[best],
                      "median_q": statistics.median(mean_q.values())}
    return out


def one_spec_lines(summary: dict[str, dict[str, Any]]) -> str:
    """`one_spec_for_all` as lines under the headroom table."""
    return "\n".join(f"{split}: one spec for all {r['tasks']} tasks, best of {r['specs']} `{r['best_spec']}` mean q "
                     f"{r['best_q']:.3f}, median spec {r['median_q']:.3f} (each task's own best: 1.000)"
                     for split, r in summary.items())
