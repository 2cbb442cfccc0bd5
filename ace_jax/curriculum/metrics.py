"""Per-step curriculum metrics and a PNG of their history.

``step_metrics`` reads a buffer and one sampled batch: LP histogram of the live entries,
frontier fraction (share of sampled states with 0.2 < p < 0.8, p = a / (a + b)), buffer size,
depth distribution, evictions, root share. ``MetricsLog`` keeps the history (and turns the
cumulative eviction count into per-step numbers); ``plot_metrics`` draws it (matplotlib, Agg).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .buffer import EvolvingBuffer

LP_EDGES = np.linspace(0.0, 1.2, 25)
FRONTIER = (0.2, 0.8)


def frontier_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Share of states with FRONTIER[0] < a / (a + b) < FRONTIER[1] (nan for none)."""
    if np.size(a) == 0:
        return float("nan")
    p = np.asarray(a, np.float64) / (np.asarray(a, np.float64) + np.asarray(b, np.float64))
    return float(np.mean((p > FRONTIER[0]) & (p < FRONTIER[1])))


def step_metrics(buffer: EvolvingBuffer, sampled_ids: Sequence[int],
                 step: int | None = None) -> dict[str, Any]:
    """Metrics of one step (plain Python numbers and lists, ready for JSON)."""
    live = buffer.live_slots()
    slots = buffer.slots_of(np.asarray(sampled_ids, dtype=np.int64))
    slots = slots[slots >= 0]
    lp_hist, _ = np.histogram(np.clip(buffer.lp[live], LP_EDGES[0], LP_EDGES[-1]), LP_EDGES)
    depth_hist = np.bincount(buffer.depth[live], minlength=buffer.config.max_depth + 1)
    n_roots = int(buffer.root_ids.size)
    return {
        "step": int(buffer.step if step is None else step),
        "size": int(buffer.size),
        "capacity": int(buffer.capacity),
        "n_roots": n_roots,
        "n_eligible": int(buffer.n_eligible),
        "n_cooling": int(np.count_nonzero(buffer.cool_until[live] >= 0)),
        "lp_hist": lp_hist.tolist(),
        "lp_edges": LP_EDGES.tolist(),
        "depth_hist": depth_hist.tolist(),
        "n_sampled": int(slots.size),
        "frontier_fraction": frontier_fraction(buffer.a[slots], buffer.b[slots]),
        "root_share": float(np.mean(buffer.protected[slots])) if slots.size else float("nan"),
        "mean_lp_sampled": float(np.mean(buffer.lp[slots])) if slots.size else float("nan"),
        "evictions_total": int(buffer.counters["n_evicted"]),
    }


class MetricsLog:
    """History of ``step_metrics``, with per-step evictions."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._last_evictions = 0  # evictions before the first record count for it

    def update(self, buffer: EvolvingBuffer, sampled_ids: Sequence[int],
               step: int | None = None) -> dict[str, Any]:
        m = step_metrics(buffer, sampled_ids, step)
        m["evictions"] = m["evictions_total"] - self._last_evictions
        self._last_evictions = m["evictions_total"]
        self.records.append(m)
        return m

    def plot(self, path: str | os.PathLike) -> None:
        plot_metrics(self.records, path)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the log exactly (JSON-ready)."""
        return {"records": [dict(r) for r in self.records], "last_evictions": self._last_evictions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]
        self._last_evictions = int(state["last_evictions"])


def plot_metrics(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Six panels: LP histogram over steps, frontier fraction, size, depths, evictions, roots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no global backend
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("plot_metrics: no records to draw")
    steps = np.array([r["step"] for r in records])
    fig = Figure(figsize=(13, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 3)
    lp = np.array([r["lp_hist"] for r in records], dtype=np.float64).T
    edges = np.asarray(records[-1]["lp_edges"])
    img = ax[0, 0].imshow(
        lp / np.maximum(lp.sum(axis=0, keepdims=True), 1), aspect="auto", origin="lower",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, edges[0], edges[-1]), cmap="viridis")
    fig.colorbar(img, ax=ax[0, 0], label="share of entries")
    ax[0, 0].set(title="LP histogram", xlabel="step", ylabel="LP")
    ax[0, 1].plot(steps, [r["frontier_fraction"] for r in records], label="frontier fraction")
    ax[0, 1].plot(steps, [r["root_share"] for r in records], label="root share")
    ax[0, 1].set(title="sampled states", xlabel="step", ylim=(0, 1))
    ax[0, 1].legend()
    ax[0, 2].plot(steps, [r["size"] for r in records], label="size")
    ax[0, 2].plot(steps, [r["n_eligible"] for r in records], label="eligible")
    ax[0, 2].plot(steps, [r["n_cooling"] for r in records], label="cooling")
    ax[0, 2].axhline(records[-1]["capacity"], color="gray", ls="--", label="capacity")
    ax[0, 2].set(title="buffer", xlabel="step")
    ax[0, 2].legend()
    depth = np.array([r["depth_hist"] for r in records], dtype=np.float64)
    ax[1, 0].stackplot(steps, depth.T, labels=[f"depth {d}" for d in range(depth.shape[1])])
    ax[1, 0].set(title="depth distribution", xlabel="step", ylabel="entries")
    ax[1, 0].legend(fontsize=7, loc="upper left")
    ax[1, 1].bar(steps, [r.get("evictions", 0) for r in records])
    ax[1, 1].set(title="evictions per step", xlabel="step")
    ax[1, 2].plot(steps, [r["mean_lp_sampled"] for r in records])
    ax[1, 2].set(title="mean LP of sampled states", xlabel="step")
    fig.savefig(path, dpi=90)
