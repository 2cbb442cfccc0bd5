"""Pick JAX platforms before first use: skip libtpu's probing on machines without a TPU.

libtpu (installed for ahead-of-time TPU compilation) otherwise tries to initialize on every
CPU-only machine and prints errors. An explicit JAX_PLATFORMS always wins.
"""

from __future__ import annotations

import glob
import importlib.util
import os


def has_tpu_device() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def choose_platforms() -> None:
    if "JAX_PLATFORMS" in os.environ or has_tpu_device():
        return
    cuda = any(importlib.util.find_spec(name) for name in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    os.environ["JAX_PLATFORMS"] = "cuda,cpu" if cuda else "cpu"
