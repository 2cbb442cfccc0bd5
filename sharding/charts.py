"""The common tail of the plan's bar charts: axis labels, title, legend, save."""

from __future__ import annotations

from typing import Sequence


def finish(fig, ax, labels: Sequence[str], ylabel: str, title: str, path: str, fontsize: int = 7) -> None:
    """Label the x ticks with `labels`, set the y label and title, add the legend, save to `path`."""
    import matplotlib.pyplot as plt

    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=fontsize)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
