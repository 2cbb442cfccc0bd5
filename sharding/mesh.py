"""Mesh configs (YAML) and the device mesh built from them.

A mesh config names the sizes of the four mesh axes `data`, `fsdp`, `expert`, `tensor` within
a slice / node (`mesh:`, the fast network) and optionally across slices / nodes (`dcn:`, the
data-center network), the logical-axis rules (`rules:`), the expert-parallel scheme, the target
hardware (`target:`) and defaults for the update step on that hardware (`train:`). A size of -1
fills the rest of the devices. A config may extend another (`base: <name or path>`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import yaml

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "expert", "tensor")
EXPERT_PARALLEL = ("none", "ring", "all_to_all")
PLATFORMS = ("tpu", "gpu", "cpu")
TOP_KEYS = ("description", "base", "target", "mesh", "dcn", "rules", "expert_parallel", "train",
            "distributed")
TARGET_KEYS = ("platform", "topology", "devices", "hbm_gb")
TRAIN_KEYS = ("batch", "seq_len", "param_dtype", "compute_dtype", "moments_dtype", "remat",
              "moe_backend")
DISTRIBUTED_KEYS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")

PRESET_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs" / "mesh"


class MeshConfigError(ValueError):
    """A mesh config that cannot be used; the message names the file, the key and the value."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """A validated mesh config. `mesh`/`dcn` map every axis of MESH_AXES to a size (dcn >= 1)."""

    name: str
    mesh: dict[str, int]
    dcn: dict[str, int]
    rules: dict[str, Any]
    expert_parallel: str = "none"
    target: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    distributed: Any = None
    description: str = ""

    @property
    def platform(self) -> str:
        return self.target.get("platform", "cpu")

    @property
    def devices(self) -> int | None:
        return self.target.get("devices")

    def axis_sizes(self, num_devices: int) -> dict[str, int]:
        """Total size of each mesh axis (ICI x DCN) for `num_devices` devices, -1 filled."""
        return {a: s * self.dcn[a] for a, s in self.ici_sizes(num_devices).items()}

    def ici_sizes(self, num_devices: int) -> dict[str, int]:
        """Per-slice (ICI) axis sizes with -1 resolved; raises if the product does not match."""
        dcn_prod = math.prod(self.dcn.values())
        sizes = dict(self.mesh)
        fill = [a for a, s in sizes.items() if s == -1]
        known = math.prod(s for s in sizes.values() if s != -1) * dcn_prod
        if fill:
            if num_devices % known:
                raise MeshConfigError(
                    f"mesh config {self.name}: the fixed axis sizes {_fmt(self.mesh, self.dcn)} multiply "
                    f"to {known}, which does not divide the device count {num_devices}")
            sizes[fill[0]] = num_devices // known
        elif known != num_devices:
            raise MeshConfigError(
                f"mesh config {self.name}: axis sizes {_fmt(self.mesh, self.dcn)} multiply to {known} "
                f"but there are {num_devices} devices")
        return sizes


def _fmt(mesh: Mapping[str, int], dcn: Mapping[str, int]) -> str:
    parts = [f"{a}={mesh[a]}" + (f"x{dcn[a]}(dcn)" if dcn.get(a, 1) != 1 else "") for a in MESH_AXES]
    return " ".join(parts)


def _check_keys(where: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise MeshConfigError(f"{where}: unknown key(s) {unknown}; allowed: {list(allowed)}")


def _sizes(where: str, data: Any, allow_fill: bool) -> dict[str, int]:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise MeshConfigError(f"{where} must be a mapping of mesh axis -> size, got {data!r}")
    for axis in data:
        if axis not in MESH_AXES:
            raise MeshConfigError(f"{where}: unknown mesh axis {axis!r}; mesh axes are {list(MESH_AXES)}")
    out = {}
    for axis in MESH_AXES:
        size = data.get(axis, 1)
        if not isinstance(size, int) or isinstance(size, bool) or not (size >= 1 or (allow_fill and size == -1)):
            allowed = "a positive integer or -1" if allow_fill else "a positive integer"
            raise MeshConfigError(f"{where}.{axis} must be {allowed}, got {size!r}")
        out[axis] = size
    if sum(s == -1 for s in out.values()) > 1:
        raise MeshConfigError(f"{where}: at most one axis may be -1, got {dict(data)}")
    return out


def resolve_path(name_or_path: str | os.PathLike) -> pathlib.Path:
    """A config path, or a preset name looked up in configs/mesh/ (with or without .yaml)."""
    path = pathlib.Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (PRESET_DIR / f"{name_or_path}.yaml", PRESET_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []
    raise MeshConfigError(f"mesh config {str(name_or_path)!r} is neither a file nor a preset; presets: {known}")


def _read(path: pathlib.Path, seen: tuple[pathlib.Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise MeshConfigError(f"mesh config {path}: 'base' chain loops: {[str(p) for p in seen]}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise MeshConfigError(f"mesh config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise MeshConfigError(f"mesh config {path} must be a mapping, got {type(data).__name__}")
    _check_keys(f"mesh config {path}", data, TOP_KEYS)
    base = data.pop("base", None)
    if base is None:
        return data
    local = [path.parent / f"{base}.yaml", path.parent / str(base)]
    base_path = next((c for c in local if c.is_file()), None) or resolve_path(base)
    return _merge(_read(base_path, seen + (path,)), data)


def _merge(base: dict[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` over `base`; the sections mesh, dcn, target and train merge key by key."""
    merged = dict(base)
    for key, value in data.items():
        if key in ("target", "train", "mesh", "dcn") and isinstance(value, Mapping):
            merged[key] = {**(merged.get(key) or {}), **value}
        else:
            merged[key] = value
    return merged


def load_mesh_config(source: str | os.PathLike | Mapping[str, Any], name: str | None = None) -> MeshConfig:
    """Load and validate a mesh config from a YAML path, a preset name, or a dict."""
    if isinstance(source, Mapping):
        data = dict(source)
        _check_keys(f"mesh config {name or '<dict>'}", data, TOP_KEYS)
        if "base" in data:
            data = _merge(_read(resolve_path(data.pop("base"))), data)
        name = name or "<dict>"
    else:
        path = resolve_path(source)
        data = _read(path)
        name = name or str(path)
    where = f"mesh config {name}"
    mesh = _sizes(f"{where}: mesh", data.get("mesh"), allow_fill=True)
    dcn = _sizes(f"{where}: dcn", data.get("dcn"), allow_fill=False)
    target = dict(data.get("target") or {})
    _check_keys(f"{where}: target", target, TARGET_KEYS)
    if target.get("platform", "cpu") not in PLATFORMS:
        raise MeshConfigError(f"{where}: target.platform is {target['platform']!r}; allowed: {list(PLATFORMS)}")
    train = dict(data.get("train") or {})
    _check_keys(f"{where}: train", train, TRAIN_KEYS)
    ep = data.get("expert_parallel", "none") or "none"
    if ep not in EXPERT_PARALLEL:
        raise MeshConfigError(f"{where}: expert_parallel is {ep!r}; allowed: {list(EXPERT_PARALLEL)}")
    distributed = data.get("distributed")
    if isinstance(distributed, Mapping):
        _check_keys(f"{where}: distributed", distributed, DISTRIBUTED_KEYS)
    elif distributed not in (None, "auto"):
        raise MeshConfigError(f"{where}: distributed must be 'auto' or a mapping with {list(DISTRIBUTED_KEYS)}")
    rules = data.get("rules")
    if not isinstance(rules, Mapping):
        raise MeshConfigError(f"{where}: 'rules' must be a mapping of logical axis -> mesh axes, got {rules!r}")
    from sharding.rules import Rules  # validation of names lives with the rules
    Rules.from_mapping(rules, where=where)
    cfg = MeshConfig(name=name, mesh=mesh, dcn=dcn, rules=dict(rules), expert_parallel=ep, target=target,
                     train=train, distributed=distributed, description=str(data.get("description", "")))
    if cfg.devices is not None:
        cfg.axis_sizes(int(cfg.devices))  # fail early if the preset contradicts its own device count
    return cfg


def initialize_distributed(cfg: MeshConfig) -> bool:
    """`jax.distributed.initialize()` when the config gives coordinates (or 'auto': TPU pod slices,
    SLURM, ...); returns True if it was called. Must run before JAX starts its backends."""
    import jax

    if cfg.distributed is None or jax.distributed.is_initialized():
        return False
    if cfg.distributed == "auto":
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(**cfg.distributed)
    return True


def build_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None):
    """A `jax.sharding.Mesh` with Auto axes (data, fsdp, expert, tensor) over `devices`.

    With DCN sizes > 1 and devices that span that many slices (TPU) or processes (GPU), the mesh
    is hybrid: DCN axes outermost. Otherwise (one host, fake devices) devices are laid out in order.
    """
    import jax
    import numpy as np
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    ici = cfg.ici_sizes(len(devices))
    total = cfg.axis_sizes(len(devices))
    ici_shape = [ici[a] for a in MESH_AXES]
    dcn_shape = [cfg.dcn[a] for a in MESH_AXES]
    shape = [total[a] for a in MESH_AXES]
    granules = math.prod(dcn_shape)
    arr = None
    if granules > 1:
        slices = {getattr(d, "slice_index", 0) for d in devices}
        processes = {d.process_index for d in devices}
        if len(slices) == granules or len(processes) == granules:
            arr = mesh_utils.create_hybrid_device_mesh(
                ici_shape, dcn_shape, devices, process_is_granule=len(slices) != granules,
                allow_split_physical_axes=True)
        else:
            log.info("mesh %s: %d devices do not span %d slices/processes; DCN axes laid out in order "
                     "(planning only)", cfg.name, len(devices), granules)
    if arr is None:
        try:
            arr = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            arr = np.asarray(devices, dtype=object).reshape(shape)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.sharding.Mesh(arr, MESH_AXES, axis_types=axis_types)


def mesh_for(source: str | os.PathLike | Mapping[str, Any]):
    """Load a mesh config, join the multi-host job if it says so, and build its mesh: (config, mesh)."""
    cfg = load_mesh_config(source)
    initialize_distributed(cfg)
    return cfg, build_mesh(cfg)
