"""Shared test setup: 8 fake CPU devices, fp32 matmuls, a persistent compilation cache."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"


def pytest_configure(config):
    try:
        import jax
    except ImportError:  # pragma: no cover
        return
    jax.config.update("jax_compilation_cache_dir", str(_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def tmp_dir(tmp_path):
    return tmp_path
