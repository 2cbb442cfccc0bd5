"""Target devices for planning: TPU topologies compiled ahead of time by libtpu on any host, or
fake CPU devices (approximate figures, used for GPU targets).

TPU: `jax.experimental.topologies.get_topology_desc(topology_name="v5p:2x4x4", platform="tpu")`
gives compile-only devices (one per chip) when libtpu is installed (`pip install
'jax[tpu]==0.10.2'` or the `tpu` / `dev` extras). It works with JAX_PLATFORMS=cpu: the TPU
plugin is loaded only for the topology, not as a backend. On a host without TPUs, libtpu is told
not to look for TPU workers (it otherwise prints errors) and not to take the single-process
lockfile (`ALLOW_MULTIPLE_LIBTPU_LOAD`), so planning runs beside other JAX processes.
"""

from __future__ import annotations

import os
import re

# Cloud TPU accelerator types -> `<gen>:<topology in chips>` (cloud.google.com/tpu/docs/v5p, v6e).
# v4 / v5p names count TensorCores (2 per chip); v5e (v5litepod) and v6e names count chips.
_TPU_TYPES = {
    "v5p-8": "v5p:2x2x1", "v5p-16": "v5p:2x2x2", "v5p-32": "v5p:2x2x4", "v5p-64": "v5p:2x4x4",
    "v5p-128": "v5p:4x4x4", "v5p-256": "v5p:4x4x8", "v5p-512": "v5p:4x8x8", "v5p-1024": "v5p:8x8x8",
    "v4-8": "v4:2x2x1", "v4-16": "v4:2x2x2", "v4-32": "v4:2x2x4", "v4-64": "v4:2x4x4", "v4-128": "v4:4x4x4",
    "v6e-1": "v6e:1x1", "v6e-4": "v6e:2x2", "v6e-8": "v6e:2x4", "v6e-16": "v6e:4x4", "v6e-32": "v6e:4x8",
    "v6e-64": "v6e:8x8", "v6e-128": "v6e:8x16", "v6e-256": "v6e:16x16",
    "v5litepod-1": "v5e:1x1", "v5litepod-4": "v5e:2x2", "v5litepod-8": "v5e:2x4", "v5litepod-16": "v5e:4x4",
    "v5litepod-32": "v5e:4x8", "v5litepod-64": "v5e:8x8", "v5litepod-128": "v5e:8x16",
    "v5litepod-256": "v5e:16x16",
}
# Per-chip HBM as the TPU compiler enforces it (measured: v5p 95.74 GB, v6e 31.25 GB).
HBM_GB = {"v5p": 95.74, "v6e": 31.25, "v5e": 15.75, "v4": 31.25}


class TopologyError(ValueError):
    """A TPU topology name that cannot be mapped or loaded."""


def tpu_topology_name(name: str) -> str:
    """'v5p-64' -> 'v5p:2x4x4'; names already in '<gen>:AxBxC' form pass through."""
    if re.fullmatch(r"v\w+:\d+(x\d+)+", name):
        return name
    if name in _TPU_TYPES:
        return _TPU_TYPES[name]
    raise TopologyError(f"unknown TPU topology {name!r}: give '<gen>:AxBxC' (e.g. 'v5p:2x2x1') or one of "
                        f"{sorted(_TPU_TYPES)}")


def tpu_chips(name: str) -> int:
    dims = tpu_topology_name(name).split(":")[1].split("x")
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _quiet_libtpu_env() -> None:
    """Before libtpu loads on a host that is not a TPU VM: no worker discovery, no lockfile."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")


def on_tpu_host() -> bool:
    """True on a TPU VM (TPU device files present)."""
    import glob

    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def prepare_planning_host() -> None:
    """Call before JAX starts its backends: planning needs only the CPU backend (TPU targets
    compile through compile-only topologies), and libtpu stays quiet on hosts without TPUs."""
    import jax

    if not os.environ.get("JAX_PLATFORMS"):
        try:
            jax.config.update("jax_platforms", "cpu")
        except RuntimeError:
            pass
    if not on_tpu_host():
        _quiet_libtpu_env()


def has_libtpu() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def tpu_devices(name: str) -> list:
    """Compile-only devices of a TPU topology (one per chip); needs libtpu."""

    topo_name = tpu_topology_name(name)
    if not on_tpu_host():
        _quiet_libtpu_env()
    if not has_libtpu():
        raise TopologyError("TPU planning needs libtpu: pip install 'jax[tpu]==0.10.2' (the 'tpu' extra)")
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=topo_name, platform="tpu").devices)
    except Exception as exc:  # libtpu raises JaxRuntimeError with its own message
        raise TopologyError(f"could not load TPU topology {topo_name!r}: {exc}") from exc


def hbm_gb_of(name: str) -> float | None:
    gen = tpu_topology_name(name).split(":")[0]
    return HBM_GB.get(gen)


def cpu_devices(count: int) -> list:
    """`count` CPU devices (fake devices for planning GPU or CPU targets).

    Asks JAX for enough host devices if its backends are not initialized yet; otherwise the
    process must already have them (XLA_FLAGS=--xla_force_host_platform_device_count=N)."""
    import jax

    flag = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    current = jax.config.jax_num_cpu_devices
    current = current if current > 0 else int(flag.group(1)) if flag else 1
    if count > current:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except (RuntimeError, ValueError):
            pass  # backends already initialized: use what exists
    devices = jax.devices("cpu")
    if len(devices) < count:
        raise TopologyError(
            f"planning needs {count} fake CPU devices but this process has {len(devices)}; run in a fresh "
            f"process or set XLA_FLAGS=--xla_force_host_platform_device_count={count}")
    return devices[:count]
