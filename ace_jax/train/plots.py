"""PNG plots of a training run: reward, validity and success, loss, curriculum signal."""

from __future__ import annotations

from typing import Any, Sequence


def plot_training(history: Sequence[dict[str, Any]], path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    panels = [
        ("reward", [("reward_mean", "mean reward"), ("best_q", "best hidden q")]),
        ("rates", [("valid_rate", "valid submissions"), ("success_rate", "successes"),
                   ("truncated_rate", "cut off at length")]),
        ("loss", [("loss", "policy loss"), ("entropy", "entropy")]),
        ("groups", [("informative_groups", "informative groups"), ("zero_variance_groups", "zero-variance groups")]),
        ("buffer", [("buffer_size", "buffer entries"), ("children_added", "children added")]),
        ("engine vs trainer", [("rollout_logprob_abs_diff", "mean |logprob diff|"),
                               ("rollout_logprob_abs_diff_max", "max |logprob diff|")]),
    ]
    for i, (title, series) in enumerate(panels):
        ax = fig.add_subplot(2, 3, i + 1)
        for key, label in series:
            ys = [h.get(key) for h in history]
            pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    FigureCanvasAgg(fig).print_png(path)
    return path
