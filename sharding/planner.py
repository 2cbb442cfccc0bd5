"""The planner: compile an update step ahead of time for a mesh and report memory per device,
whether it fits, and the collective traffic per mesh axis.

The step and its abstract state come in as a `StepSpec` (the planner imports no model code):
`fn(state, batch) -> (state, metrics)`, abstract `state` / `batch` (ShapeDtypeStruct with
shardings; nothing is allocated), getters for the parameter and optimizer parts of the state,
and per-device analytic estimates. The step is jitted with the state donated and its output
state sharded like its input.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sharding.collectives import bf16_traffic, mesh_collectives, traffic_table
from sharding.hlo_costs import hlo_flops

GB = float(2**30)   # GiB, the unit XLA reports HBM in ("95.74G" for a v5p chip)


@dataclasses.dataclass
class StepSpec:
    fn: Callable[[Any, Any], Any]
    state: Any
    batch: Any
    parts: dict[str, Callable[[Any], Any]]
    analytic: dict[str, int]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PlanResult:
    name: str
    compiler: str                       # e.g. "TPU compiler (v5p:2x4x4)" or "fake CPU devices"
    exact: bool                         # True: the target's own compiler; False: approximate
    devices: int
    mesh: dict[str, int]
    hbm_bytes: float | None
    fits: bool | None
    memory: dict[str, int | None]       # per device, from the compiled executable
    analytic: dict[str, int]            # per device, analytic estimate
    collectives: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    compile_s: float = 0.0
    error: str | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def peak(self) -> int | None:
        return self.memory.get("peak")


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded arrays / ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return int(total)


def _bytes_with(abstract: Any, shardings: Any) -> int:
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(
            shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))):
        total += math.prod(sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return int(total)


_OOM = (re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", re.IGNORECASE),
        re.compile(r"memory required for [\w ]+\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)",
                   re.IGNORECASE))
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_oom(message: str) -> tuple[float, float] | None:
    """(needed bytes, capacity bytes) from the TPU compiler's out-of-memory message, if present."""
    for pattern in _OOM:
        m = pattern.search(message)
        if m:
            return (float(m.group(1)) * _UNITS[m.group(2).upper()],
                    float(m.group(3)) * _UNITS[m.group(4).upper()])
    return None


def lower_step(spec: StepSpec, mesh):
    """Trace and lower `spec.fn` with the state donated and the output state sharded like the input."""
    state_shardings = jax.tree.map(lambda a: a.sharding, spec.state)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(spec.fn, donate_argnums=(0,), out_shardings=(state_shardings, replicated))
    return jitted.lower(spec.state, spec.batch)


def compile_step(spec: StepSpec, mesh):
    """Lower and compile `spec.fn`; returns the compiled executable."""
    return lower_step(spec, mesh).compile()


def memory_of(compiled, spec: StepSpec) -> dict[str, int | None]:
    """Per-device bytes by category from the compiled executable."""
    stats = compiled.memory_analysis()
    state_shardings = compiled.input_shardings[0][0]
    out: dict[str, int | None] = {}
    for part, get in spec.parts.items():
        out[part] = _bytes_with(get(spec.state), get(state_shardings))
    out["batch"] = _bytes_with(spec.batch, compiled.input_shardings[0][1])
    out["arguments"] = int(stats.argument_size_in_bytes)
    out["outputs"] = int(stats.output_size_in_bytes)
    out["aliased"] = int(stats.alias_size_in_bytes)
    out["temp"] = int(stats.temp_size_in_bytes)
    peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    computed = out["arguments"] + out["outputs"] - out["aliased"] + out["temp"]
    out["peak"] = max(peak, computed) if peak else computed
    return out


def compiled_costs(compiled, hlo: str) -> dict[str, float]:
    """Per-device FLOPs and HBM bytes of a compiled step counted from its HLO (loops weighted by
    trip count), the kernels' share, and XLA's own cost analysis (`xla_*`, loops undercounted)."""
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    counted = hlo_flops(hlo)
    return {"flops": counted["total"], "kernel_flops": counted["kernels"], "kernel_calls": int(counted["kernel_calls"]),
            "hbm_bytes": counted["hbm_bytes"], "xla_flops": float(cost.get("flops", 0.0)),
            "xla_hbm_bytes": float(cost.get("bytes accessed", 0.0))}


def plan(spec: StepSpec, mesh, *, name: str, compiler: str, exact: bool,
         hbm_bytes: float | None = None, notes: list[str] | None = None, hlo_path: str | None = None) -> PlanResult:
    """Compile `spec` on `mesh` and report; a compile that runs out of memory is reported as not fitting.
    `hlo_path`: also write the compiled HLO text there."""
    sizes = {k: int(v) for k, v in mesh.shape.items()}
    result = PlanResult(name=name, compiler=compiler, exact=exact, devices=mesh.size, mesh=sizes,
                        hbm_bytes=hbm_bytes, fits=None, memory={}, analytic=dict(spec.analytic),
                        info=dict(spec.info), notes=list(notes or []))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = lower_step(spec, mesh)
    result.info["lower_s"] = round(time.perf_counter() - start, 1)
    try:
        with jax.set_mesh(mesh):
            compiled = lowered.compile()
    except Exception as exc:  # the TPU compiler reports HBM exhaustion as a compile error
        result.compile_s = time.perf_counter() - start
        message = str(exc)
        oom = parse_oom(message)
        if oom is None and "RESOURCE_EXHAUSTED" not in message:
            raise
        result.fits = False
        for part, get in spec.parts.items():   # known from the shardings without compiling
            result.memory[part] = shard_bytes(get(spec.state))
        result.memory["batch"] = shard_bytes(spec.batch)
        first = next((ln for ln in message.splitlines() if "RESOURCE_EXHAUSTED" in ln), message.splitlines()[0])
        if oom:
            result.memory["peak"] = int(oom[0])
            result.hbm_bytes = min(hbm_bytes or oom[1], oom[1])
            result.error = (f"does not fit: the compiler needs at least {oom[0] / GB:.2f} GiB per device, "
                            f"the chip has {oom[1] / GB:.2f} GiB ({first.strip()[:300]})")
        else:
            result.error = "does not fit: " + first.strip()[:300]
        return result
    result.compile_s = time.perf_counter() - start
    result.memory = memory_of(compiled, spec)
    hlo = compiled.as_text()
    if hlo_path:
        os.makedirs(os.path.dirname(hlo_path) or ".", exist_ok=True)
        with open(hlo_path, "w") as f:
            f.write(hlo)
    found = mesh_collectives(hlo, mesh)
    result.collectives = traffic_table(found)
    result.info["traffic_bf16"] = bf16_traffic(found)
    result.info["compiled"] = compiled_costs(compiled, hlo)
    if hbm_bytes:
        result.fits = result.memory["peak"] <= hbm_bytes
        if not result.fits:
            result.error = (f"does not fit: {result.memory['peak'] / GB:.2f} GiB per device needed, "
                            f"budget {hbm_bytes / GB:.2f} GiB")
    return result
