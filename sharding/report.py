"""Plan reports: a per-config memory / collectives breakdown, and sweep tables (markdown, CSV, PNG)."""

from __future__ import annotations

import csv
import os
from typing import Sequence

from sharding.planner import GB, PlanResult


def _gb(x: float | None) -> str:
    """Bytes in GiB, or MiB / KiB for small figures (tiny models)."""
    if x is None:
        return "-"
    for unit, size in (("", GB), (" MiB", 2**20), (" KiB", 2**10)):
        if x >= size or unit == " KiB":
            return f"{x / size:.2f}{unit}"
    return str(x)


def _mesh(r: PlanResult) -> str:
    return "x".join(f"{a[0]}{s}" for a, s in r.mesh.items() if s > 1) or "1"


def fit_text(r: PlanResult) -> str:
    if r.fits is None:
        return "unknown (no HBM budget)"
    return "yes" if r.fits else "NO"


def detail(r: PlanResult) -> str:
    """Human-readable report of one plan."""
    src = "real target compiler" if r.exact else "fake CPU devices: APPROXIMATE"
    info = r.info
    lines = [
        f"== {r.name}",
        f"compiled with: {r.compiler} ({src}); trace+lower {info.get('lower_s', 0):.1f} s, total {r.compile_s:.1f} s",
        f"devices {r.devices}, mesh " + ", ".join(f"{a}={s}" for a, s in r.mesh.items()),
        f"step: {info.get('step', '?')}; batch {info.get('batch')} x seq {info.get('seq_len')}; params "
        f"{info.get('params', 0) / 1e9:.3f} B ({info.get('param_dtype')}), compute {info.get('compute_dtype')}, "
        f"moments {info.get('moments_dtype')}, remat {info.get('remat')}, moe {info.get('moe_backend')}, "
        f"expert parallel {info.get('expert_parallel')}",
        "",
        f"{'per device (GiB)':<28}{'compiled':>12}{'analytic':>12}",
    ]
    m, a = r.memory, r.analytic
    rows = [("parameters", m.get("params"), a.get("params")),
            ("optimizer state", m.get("optimizer"), a.get("optimizer")),
            ("gradients (inside temp)", None, a.get("gradients")),
            ("activations / temp", m.get("temp"), a.get("activations")),
            ("batch", m.get("batch"), None),
            ("arguments (XLA, padded)", m.get("arguments"), None)]
    for label, c, e in rows:
        lines.append(f"{label:<28}{_gb(c):>12}{_gb(e):>12}")
    analytic_total = sum(v for v in a.values() if v)
    lines.append(f"{'peak / total':<28}{_gb(m.get('peak')):>12}{_gb(analytic_total):>12}")
    lines.append(f"{'HBM budget':<28}{_gb(r.hbm_bytes):>12}")
    lines.append(f"fits: {fit_text(r)}" + (f" -- {r.error}" if r.error else ""))
    if r.collectives:
        lines += ["", f"{'collectives per step (GiB/device)':<34}{'traffic':>10}{'payload':>10}{'ops':>7}  kinds"]
        for axes, row in r.collectives.items():
            kinds = ", ".join(f"{k} {_gb(v)}" for k, v in row.items() if k not in ("traffic", "payload", "ops"))
            lines.append(f"{axes:<34}{_gb(row['traffic']):>10}{_gb(row['payload']):>10}{int(row['ops']):>7}  {kinds}")
    for note in r.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


COLUMNS = ("config", "compiler", "exact", "devices", "mesh", "batch", "seq_len", "params_gib", "optimizer_gib",
           "gradients_gib", "temp_gib", "activations_est_gib", "peak_gib", "hbm_gib", "fits", "collective_gib",
           "top_axis", "compile_s")


def row(r: PlanResult) -> dict:
    traffic = sum(v["traffic"] for v in r.collectives.values())
    top = next(iter(r.collectives), "-")
    g = lambda x: None if x is None else float(f"{x / GB:.4g}")  # noqa: E731
    return {"config": r.name, "compiler": r.compiler, "exact": r.exact, "devices": r.devices, "mesh": _mesh(r),
            "batch": r.info.get("batch"), "seq_len": r.info.get("seq_len"),
            "params_gib": g(r.memory.get("params")), "optimizer_gib": g(r.memory.get("optimizer")),
            "gradients_gib": g(r.analytic.get("gradients")), "temp_gib": g(r.memory.get("temp")),
            "activations_est_gib": g(r.analytic.get("activations")), "peak_gib": g(r.memory.get("peak")),
            "hbm_gib": g(r.hbm_bytes), "fits": fit_text(r), "collective_gib": g(traffic) if r.collectives else None,
            "top_axis": top, "compile_s": round(r.compile_s, 1)}


def markdown(results: Sequence[PlanResult]) -> str:
    rows = [row(r) for r in results]
    head = "| " + " | ".join(COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join("-" if r[c] is None else str(r[c]) for c in COLUMNS) + " |" for r in rows]
    legend = ("\nSizes in GiB per device per step. `exact` = compiled by the target's own "
              "compiler; otherwise fake CPU devices (approximate). gradients: analytic (they live in temp).")
    return "\n".join([head, sep, *body]) + "\n" + legend + "\n"


def write_sweep(results: Sequence[PlanResult], out_dir: str, stem: str = "plan") -> dict[str, str]:
    """Write <stem>.md, <stem>.csv and <stem>.png (stacked bars per config) into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("md", "csv", "png")}
    with open(paths["md"], "w") as f:
        f.write(markdown(results))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in results:
            writer.writerow(row(r))
    _chart(results, paths["png"])
    return paths


def _chart(results: Sequence[PlanResult], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.name}\nb{r.info.get('batch')}x{r.info.get('seq_len')}" for r in results]
    parts = [("params", lambda r: r.memory.get("params")), ("optimizer", lambda r: r.memory.get("optimizer")),
             ("temp (grads+activations)", lambda r: r.memory.get("temp"))]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results)), 4.5))
    bottom = [0.0] * len(results)
    for label, get in parts:
        vals = [(get(r) or 0) / GB for r in results]
        ax.bar(range(len(results)), vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(results):
        if r.hbm_bytes:
            ax.hlines(r.hbm_bytes / GB, i - 0.4, i + 0.4, colors="red", linestyles="dashed")
        if r.fits is False and not r.memory.get("temp"):
            ax.bar(i, (r.peak or 0) / GB, color="lightgray", hatch="//", label="needed (does not fit)")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("GiB per device")
    ax.set_title("ace-jax plan: memory per device (red dashes: HBM)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
