"""Plan reports: a per-config memory / collectives breakdown, and sweep tables (markdown, CSV, PNG)."""

from __future__ import annotations

import csv
import os
from typing import Sequence

from sharding import roofline
from sharding.charts import finish
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
    lines += costs_lines(r)
    for note in r.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def total_traffic(r: PlanResult) -> float:
    return sum(v["traffic"] for v in r.collectives.values())


def executed_flops(r: PlanResult) -> float | None:
    """Compiled FLOPs with the grouped-matmul kernels at their routed rows: a kernel declares its
    cost over its static row buffer (under expert parallelism ep x the rows routed to the device),
    but runs only the tiles of its groups; with balanced routing that is 1/ep of the buffer."""
    compiled = r.info.get("compiled")
    if not compiled:
        return None
    ep = max(int(r.info.get("ep") or 1), 1)
    return compiled["flops"] - compiled.get("kernel_flops", 0.0) * (1 - 1 / ep)


def step_roofline(r: PlanResult) -> roofline.Roofline | None:
    """The roofline of a compiled plan on its chip (None without a known chip or compiled costs)."""
    chip, compiled = roofline.CHIPS.get(r.info.get("chip") or ""), r.info.get("compiled")
    flops = r.info.get("flops_analytic") or {}
    if not chip or not compiled:
        return None
    return roofline.estimate(chip, flops=executed_flops(r), hbm_bytes=compiled["hbm_bytes"],
                             comm_bytes=total_traffic(r), model_flops=flops.get("model", 0.0),
                             tokens=r.info.get("tokens_per_device", 0))


def costs_lines(r: PlanResult) -> list[str]:
    """Compiled FLOPs / traffic against the analytic counts, the MoE layer's kernels, the roofline."""
    info, compiled = r.info, r.info.get("compiled")
    if not compiled:
        return []
    flops = info.get("flops_analytic") or {}
    lines = ["", f"{'per device per step':<40}{'compiled':>12}{'analytic':>12}{'ratio':>8}",
             f"{'FLOPs (matmuls + kernels, from HLO)':<40}{compiled['flops']:>12.3e}{flops.get('hardware', 0):>12.3e}"
             f"{_ratio(compiled['flops'], flops.get('hardware')):>8}",
             f"{'FLOPs, kernels at routed rows':<40}{executed_flops(r):>12.3e}{flops.get('hardware', 0):>12.3e}"
             f"{_ratio(executed_flops(r), flops.get('hardware')):>8}",
             f"{'FLOPs (XLA cost analysis)':<40}{compiled.get('xla_flops', 0):>12.3e}"]
    if compiled.get("kernel_calls"):
        lines.append(f"{'  grouped-matmul kernels (declared)':<40}{compiled['kernel_flops']:>12.3e}"
                     f"{flops.get('experts', 0):>12.3e}{_ratio(compiled['kernel_flops'], flops.get('experts')):>8}"
                     f"  ({compiled['kernel_calls']} calls; declared over the static row buffer, "
                     f"{info.get('ep', 1)}x the routed rows under expert parallelism)")
    lines.append(f"{'HBM bytes (from HLO)':<40}{compiled['hbm_bytes']:>12.3e}")
    lines.append(f"{'HBM bytes (XLA cost analysis)':<40}{compiled.get('xla_hbm_bytes', 0):>12.3e}")
    minimum = info.get("traffic_minimum") or {}
    if minimum and r.collectives:
        kinds: dict[str, float] = {}
        for row_ in r.collectives.values():
            for k, v in row_.items():
                if k not in ("traffic", "payload", "ops"):
                    kinds[k] = kinds.get(k, 0.0) + v
        lines += ["", f"{'collectives (GiB/device/step)':<40}{'compiled':>12}{'minimum':>12}{'ratio':>8}",
                  f"{'total, as compiled (raw HLO)':<40}{_gb(total_traffic(r)):>12}{_gb(minimum['total']):>12}"
                  f"{_ratio(total_traffic(r), minimum['total']):>8}"]
        widened = r.info.get("traffic_bf16")
        if widened is not None and widened < 0.999 * total_traffic(r):
            lines.append(f"{'total, widened bf16 counted in bf16':<40}{_gb(widened):>12}{_gb(minimum['total']):>12}"
                         f"{_ratio(widened, minimum['total']):>8}  (the CPU compiler widened "
                         f"{_gb(total_traffic(r) - widened)} GiB of bf16 collectives to f32; a GPU moves them in bf16)")
        lines += [f"  compiled {k:<31}{_gb(v):>12}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
        lines += [f"  minimum {k:<32}{'':>12}{_gb(v):>12}" for k, v in minimum.items() if k != "total"]
    for backend, row_ in (info.get("moe_layer_flops") or {}).items():
        layer = info["moe_layer"]
        lines.append(f"MoE layer fwd+bwd, one device ({layer['rows']} rows x {layer['hidden']} x {layer['width']}, "
                     f"{layer['local_experts']} local experts, {layer['dtype']}), {backend}: compiled "
                     f"{row_['compiled']:.3e} vs analytic {row_['analytic']:.3e} FLOPs "
                     f"({_ratio(row_['compiled'], row_['analytic'])})")
    roof = step_roofline(r)
    if roof:
        c = roof.chip
        lines += ["", f"roofline on {c.name}: peak {c.peak_flops / 1e12:.0f} TFLOP/s, HBM {c.hbm_bw / 1e9:.0f} GB/s, "
                  f"interconnect {c.link_bw / 1e9:.0f} GB/s ({c.source})",
                  f"  compute {roof.t_compute:.3g} s, HBM {roof.t_hbm:.3g} s, interconnect {roof.t_comm:.3g} s "
                  f"-> step {roof.step_overlapped:.3g} s overlapped / {roof.step_serial:.3g} s serial "
                  f"({roof.bound}-bound)",
                  f"  MFU {100 * roof.mfu_overlapped:.1f}% overlapped / {100 * roof.mfu_serial:.1f}% serial; "
                  f"{roof.tokens_per_s_chip:.0f} tokens/s/chip (overlapped)"]
        published = roofline.PUBLISHED.get(r.info.get("chip"))
        if published:
            lines.append(f"  published: {published[0]}: {100 * published[1]:.1f}% MFU")
    return lines


COLUMNS = ("config", "compiler", "exact", "devices", "mesh", "batch", "seq_len", "params_gib", "optimizer_gib",
           "gradients_gib", "temp_gib", "activations_est_gib", "peak_gib", "hbm_gib", "fits", "collective_gib",
           "top_axis", "compile_s", "flops_vs_analytic", "traffic_vs_minimum",
           "traffic_bf16_vs_minimum", "step_s_overlap", "step_s_serial",
           "mfu_overlap", "tokens_s_chip")


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
            "top_axis": top, "compile_s": round(r.compile_s, 1), **_roofline_row(r)}


def _roofline_row(r: PlanResult) -> dict:
    minimum = r.info.get("traffic_minimum") or {}
    flops = (r.info.get("flops_analytic") or {}).get("hardware")
    roof = step_roofline(r)
    ratio = lambda a, b: round(a / b, 2) if a and b else None  # noqa: E731
    return {"flops_vs_analytic": ratio(executed_flops(r), flops),
            "traffic_vs_minimum": ratio(total_traffic(r), minimum.get("total")),
            "traffic_bf16_vs_minimum": ratio(r.info.get("traffic_bf16"), minimum.get("total")),
            "step_s_overlap": float(f"{roof.step_overlapped:.3g}") if roof else None,
            "step_s_serial": float(f"{roof.step_serial:.3g}") if roof else None,
            "mfu_overlap": round(roof.mfu_overlapped, 3) if roof else None,
            "tokens_s_chip": round(roof.tokens_per_s_chip) if roof else None}


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
    roofs = [(r.name, roof) for r in results if (roof := step_roofline(r))]
    if roofs:
        paths["roofline"] = os.path.join(out_dir, f"{stem}-roofline.png")
        roofline.chart(roofs, paths["roofline"])
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
    finish(fig, ax, labels, "GiB per device", "ace-jax plan: memory per device (red dashes: HBM)", path)
