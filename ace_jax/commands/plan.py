"""`ace-jax plan`: compile the update step for a model on a mesh config and report memory per device.

    ace-jax plan --model qwen3-30b-a3b --mesh configs/mesh/v5p-64.yaml [--devices N] [--hbm-gb G]
                 [--batch B[,B2..]] [--seq-len T] [--sweep GLOB] [--out DIR] [--json FILE]

TPU targets compile with the real TPU compiler (libtpu, ahead of time, on any host); GPU/CPU
targets compile on fake CPU devices and are marked approximate. Nothing is allocated: params
and optimizer state are abstract (ShapeDtypeStruct with shardings).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
import time
from typing import Any, Callable

# The update step compiled per plan: name -> "module:function" building a sharding.planner.StepSpec
# from (cfg, mesh, rules, *, batch, seq_len, moments_dtype, expert_parallel, ep_local). Add a step here.
STEP_BUILDERS: dict[str, str] = {
    "grpo": "ace_jax.train.plan_step:build_grpo",          # the GRPO train step (ace_jax.train.step)
    "adamw-xent": "ace_jax.train.plan_step:build",         # forward + backward + AdamW, token cross-entropy
}
DEFAULTS = {"param_dtype": "float32", "compute_dtype": "bfloat16", "moments_dtype": "float32", "remat": "full",
            "moe_backend": "auto", "seq_len": 2048}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model preset (e.g. qwen3-30b-a3b, tiny-moe)")
    p.add_argument("--mesh", action="append", default=[], help="mesh config YAML or preset name (repeatable)")
    p.add_argument("--sweep", action="append", default=[], help="glob of mesh configs to compare (repeatable)")
    p.add_argument("--devices", type=int, help="device count (default: the config's target.devices)")
    p.add_argument("--hbm-gb", type=float, help="HBM budget per device in GiB (default: the config's target.hbm_gb, else the chip's)")
    p.add_argument("--batch", help="global batch (comma list to try several; default: config or 1 per batch shard)")
    p.add_argument("--seq-len", type=int, help="sequence length (default: config or 2048)")
    p.add_argument("--param-dtype", choices=("float32", "bfloat16"))
    p.add_argument("--compute-dtype", choices=("float32", "bfloat16"))
    p.add_argument("--moments-dtype", choices=("float32", "bfloat16"), help="AdamW moments dtype")
    p.add_argument("--remat", choices=("none", "full", "dots"))
    p.add_argument("--moe-backend", choices=("auto", "dense", "ragged", "blocked", "gmm"))
    p.add_argument("--target", choices=("auto", "tpu", "cpu"), default="auto",
                   help="auto: TPU compiler for TPU targets (libtpu), fake CPU devices otherwise")
    p.add_argument("--step", choices=sorted(STEP_BUILDERS), default="grpo", help="update step to compile")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    p.add_argument("--out", default="plan-out", help="directory for sweep outputs (md, csv, png)")
    p.add_argument("--json", help="write all results as JSON to this file")
    p.add_argument("--hlo-dir", help="write each compiled step's HLO text to DIR/<config>.hlo")


def build_module(name: str):
    """The module of step `name`'s builder (it may also offer `moe_layer_flops`)."""
    import importlib

    return importlib.import_module(STEP_BUILDERS[name].split(":")[0])


def _load_builder(name: str) -> Callable:
    return getattr(build_module(name), STEP_BUILDERS[name].split(":")[1])


def _overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _configs(args) -> list:
    from sharding.mesh import load_mesh_config

    paths = list(args.mesh)
    for pattern in args.sweep:
        found = sorted(glob.glob(pattern))
        if not found:
            raise SystemExit(f"--sweep {pattern!r} matched no files")
        paths += found
    if not paths:
        raise SystemExit("give --mesh CONFIG or --sweep GLOB")
    return [load_mesh_config(p) for p in paths]


def _device_count(cfg, args) -> int:
    n = args.devices or cfg.devices
    if n is None:
        raise SystemExit(f"mesh config {cfg.name} has no target.devices; pass --devices N")
    return int(n)


def _batches(args, cfg, mesh, rules) -> list[int]:
    if args.batch:
        return [int(b) for b in str(args.batch).split(",")]
    if cfg.train.get("batch"):
        return [int(cfg.train["batch"])]
    from sharding.rules import as_rules, resolve

    spec, _ = resolve(("batch",), (mesh.size,), mesh, as_rules(rules))
    axes = spec[0] if len(spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return [math.prod(mesh.shape[a] for a in axes)]


def plan_one(cfg, args, devices_for: Callable[[Any, int], tuple[list, str, bool, float | None, list[str]]]):
    """All plans (one per batch size) for one mesh config."""
    from ace_jax.models import get_config
    from sharding import planner, roofline
    from sharding.mesh import build_mesh
    from sharding.rules import replication_notes

    n = _device_count(cfg, args)
    devices, compiler, exact, chip_hbm, notes = devices_for(cfg, n)
    mesh = build_mesh(cfg, devices)
    t = {k: getattr(args, k, None) or cfg.train.get(k) or DEFAULTS.get(k) for k in DEFAULTS}
    seq_len = int(t["seq_len"])
    if t["moe_backend"] == "auto":   # the model's rule (gmm on TPU, blocked elsewhere), for the target
        from ace_jax.models.moe import auto_backend

        t["moe_backend"] = auto_backend("tpu" if exact and "TPU" in compiler else cfg.platform)
    hbm_gb = args.hbm_gb or cfg.target.get("hbm_gb") or chip_hbm
    model_cfg = get_config(args.model, param_dtype=t["param_dtype"], compute_dtype=t["compute_dtype"],
                           remat=t["remat"], moe_backend=t["moe_backend"], **_overrides(args.set))
    build = _load_builder(args.step)
    ep_local = None
    if not exact and cfg.expert_parallel != "none":
        # XLA:CPU lowers ragged_dot by expanding every group densely ([groups, rows, cols]), which a GPU
        # (grouped GEMM) never allocates; the dense local expert computation is the closer proxy.
        ep_local = "dense"
        notes = list(notes) + ["expert-parallel local experts planned with the dense computation "
                               "(XLA:CPU's ragged_dot expands every group): every local expert on every "
                               "gathered token, so the expert FLOPs are counted local-experts times over; "
                               "on GPU the gmm backend runs tokamax's grouped matmuls (the gpu extra)"]
    results = []
    for batch in _batches(args, cfg, mesh, cfg.rules):
        spec = build(model_cfg, mesh, cfg.rules, batch=batch, seq_len=seq_len,
                     moments_dtype=t["moments_dtype"], expert_parallel=cfg.expert_parallel, ep_local=ep_local)
        name = os.path.splitext(os.path.basename(cfg.name))[0]
        extra = list(notes) + replication_notes(spec.parts["params"](spec.state), mesh, cfg.rules)
        print(f"[plan] {name}: compiling {args.model} batch {batch} x {seq_len} on {n} devices ({compiler}) ...",
              file=sys.stderr, flush=True)
        result = planner.plan(spec, mesh, name=name, compiler=compiler, exact=exact,
                              hbm_bytes=hbm_gb * planner.GB if hbm_gb else None, notes=extra,
                              hlo_path=os.path.join(args.hlo_dir, f"{name}-b{batch}.hlo") if args.hlo_dir else None)
        result.info["chip"] = roofline.chip_key(name, cfg.platform, cfg.target.get("topology"))
        layer = spec.info.get("moe_layer")
        if layer and exact and hasattr(build_module(args.step), "moe_layer_flops"):
            backends = sorted({"ragged", t["moe_backend"]} & {"ragged", "gmm"})
            result.info["moe_layer_flops"] = build_module(args.step).moe_layer_flops(layer, backends, devices[0])
        results.append(result)
    return results


def _devices_for(target: str):
    from sharding import topology

    def get(cfg, n):
        platform = cfg.platform
        use_tpu = target == "tpu" or (target == "auto" and platform == "tpu")
        notes = []
        if use_tpu and target == "auto" and not topology.has_libtpu():
            use_tpu = False
            notes.append("libtpu is not installed (pip install 'jax[tpu]==0.10.2'): TPU target planned on "
                         "fake CPU devices")
        if use_tpu:
            name = cfg.target.get("topology")
            if not name:
                raise SystemExit(f"mesh config {cfg.name}: TPU target needs target.topology (e.g. v5p-64)")
            devices = topology.tpu_devices(name)
            if len(devices) != n:
                raise SystemExit(f"mesh config {cfg.name}: topology {name} has {len(devices)} chips but the "
                                 f"config asks for {n} devices")
            return (devices, f"TPU compiler ({topology.tpu_topology_name(name)})", True,
                    topology.hbm_gb_of(name), [])
        if platform != "cpu":
            notes.append(f"{platform.upper()} target planned on {n} fake CPU devices: memory and collectives "
                         "are approximate (the CPU compiler's buffer assignment and fusion differ)")
        return topology.cpu_devices(n), "fake CPU devices", False, None, notes

    return get


def run(args) -> int:
    from sharding import topology

    topology.prepare_planning_host()
    start = time.perf_counter()
    configs = _configs(args)
    if args.target != "tpu":
        need = [_device_count(c, args) for c in configs
                if args.target == "cpu" or c.platform != "tpu" or not topology.has_libtpu()]
        if need:
            topology.cpu_devices(max(need))
    from sharding import report

    getter = _devices_for(args.target)
    results = []
    for cfg in configs:
        for result in plan_one(cfg, args, getter):
            print(report.detail(result), flush=True)
            print(flush=True)
            results.append(result)
    print(report.markdown(results))
    if args.sweep or len(results) > 1:
        paths = report.write_sweep(results, args.out)
        print("wrote " + ", ".join(paths.values()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=2, default=str)
    print(f"plan finished in {time.perf_counter() - start:.1f} s")
    return 0
