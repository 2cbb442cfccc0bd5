"""A roofline estimate of a planned step: chip peaks, time bounds, step time, MFU, tokens/s/chip.

From per-device compiled FLOPs, HBM bytes and collective bytes:
    t_compute = flops / peak FLOP/s        t_hbm = bytes / HBM bandwidth
    t_comm    = collective bytes / (interconnect bandwidth / 2)   (bytes sent per direction)
    overlapped step = max(t_compute, t_hbm, t_comm);  serial step = max(t_compute, t_hbm) + t_comm
MFU = model FLOPs (6 N + attention, `ace_jax.train.plan_step.analytic_flops`) / (step x peak).
Peaks are dense bf16; interconnect is the chip's total bidirectional ICI / NVLink bandwidth.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from sharding.charts import finish


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_flops: float      # dense bf16 FLOP/s
    hbm_bw: float          # bytes/s
    link_bw: float         # bytes/s, bidirectional, per chip
    source: str


CHIPS: dict[str, Chip] = {
    "v5p": Chip("TPU v5p", 459e12, 2765e9, 1200e9, "cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 2765 GB/s, ICI 1200 GB/s)"),
    "v6e": Chip("TPU v6e", 918e12, 1638e9, 800e9, "cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 1638 GB/s, ICI 800 GB/s)"),
    "h100": Chip("H100 SXM", 989e12, 3.35e12, 900e9, "nvidia.com H100 datasheet (989 TFLOP/s dense bf16, 3.35 TB/s, NVLink 900 GB/s)"),
    "h200": Chip("H200 SXM", 989e12, 4.8e12, 900e9, "nvidia.com H200 datasheet (989 TFLOP/s dense bf16, 4.8 TB/s, NVLink 900 GB/s)"),
}

# A published figure to compare with: MaxText's MoE training on v5p (end_to_end/tpu/mixtral/Run_Mixtral.md).
PUBLISHED = {"v5p": ("MaxText Mixtral 8x7B on v5p-128 (megablox, dropless)", 0.5489)}


def chip_key(mesh_name: str, platform: str, topology: str | None = None) -> str | None:
    """The `CHIPS` key of a mesh config: TPU generation from its topology, GPU from its name (h100 / h200)."""
    if platform == "tpu" and topology:
        gen = topology.split(":")[0].split("-")[0]
        return gen if gen in CHIPS else None
    return next((key for key in ("h200", "h100") if key in mesh_name.lower()), None)


@dataclasses.dataclass
class Roofline:
    chip: Chip
    t_compute: float
    t_hbm: float
    t_comm: float
    step_overlapped: float
    step_serial: float
    mfu_overlapped: float
    mfu_serial: float
    tokens_per_s_chip: float          # at the overlapped step time
    bound: str


def estimate(chip: Chip, *, flops: float, hbm_bytes: float, comm_bytes: float, model_flops: float,
             tokens: float) -> Roofline:
    """Roofline of one device's step (all figures per device)."""
    t_compute = flops / chip.peak_flops
    t_hbm = hbm_bytes / chip.hbm_bw
    t_comm = comm_bytes / (chip.link_bw / 2)
    local = max(t_compute, t_hbm)
    over, serial = max(local, t_comm), local + t_comm
    bound = max((("compute", t_compute), ("HBM", t_hbm), ("interconnect", t_comm)), key=lambda kv: kv[1])[0]
    mfu = lambda t: model_flops / (t * chip.peak_flops) if t else 0.0  # noqa: E731
    return Roofline(chip, t_compute, t_hbm, t_comm, over, serial, mfu(over), mfu(serial),
                    tokens / over if over else 0.0, bound)


def chart(rows: Sequence[tuple[str, Roofline]], path: str) -> None:
    """PNG: per mesh, the compute / HBM / interconnect time bounds and both step estimates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(rows)), 4.5))
    parts = (("compute", "t_compute"), ("HBM", "t_hbm"), ("interconnect", "t_comm"),
             ("step (overlap)", "step_overlapped"), ("step (serial)", "step_serial"))
    width = 0.8 / len(parts)
    for j, (label, attr) in enumerate(parts):
        ax.bar([i + (j - 2) * width for i in range(len(rows))], [getattr(r, attr) for _, r in rows], width,
               label=label)
    for i, (_, r) in enumerate(rows):
        ax.text(i, r.step_serial, f"MFU {100 * r.mfu_overlapped:.0f}-{100 * r.mfu_serial:.0f}%", ha="center",
                va="bottom", fontsize=7)
    finish(fig, ax, [f"{name}\n{r.chip.name}" for name, r in rows], "seconds per step",
           "ace-jax plan: roofline per mesh", path, fontsize=8)
