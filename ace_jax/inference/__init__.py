"""Embedded JAX rollout engine and the SGLang-compatible HTTP server over it."""

from ace_jax.inference.buckets import Buckets
from ace_jax.inference.engine import JaxEngine

__all__ = ["Buckets", "JaxEngine"]
