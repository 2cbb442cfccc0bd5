"""Pick the decode MoE backend by measurement: time one MoE block per backend at a model's shapes."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from ace_jax.models.config import Qwen3Config
from ace_jax.models.moe import moe_block

DECODE_CANDIDATES = ("dense", "blocked", "ragged", "sparse", "capacity")
_CHOICES: dict[tuple, tuple[str, dict[str, float]]] = {}


def fastest_backend(cfg: Qwen3Config, tokens: int, candidates: tuple[str, ...] = DECODE_CANDIDATES,
                    repeats: int = 5) -> tuple[str, dict[str, float]]:
    """The fastest backend for a MoE block forward on `tokens` rows (a decode step's batch) with
    `cfg`'s expert shapes and compute dtype, and each backend's median ms. Cached per shape."""
    if not cfg.is_moe:
        raise ValueError("fastest_backend needs a MoE config")
    key = (cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size,
           cfg.compute_dtype, tokens, candidates, jax.default_backend())
    if key not in _CHOICES:
        _CHOICES[key] = _measure(cfg, tokens, candidates, repeats)
    return _CHOICES[key]


def _measure(cfg: Qwen3Config, tokens: int, candidates: tuple[str, ...], repeats: int):
    h, e, i = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
    dt = jnp.dtype(cfg.compute_dtype)
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (tokens, h), dt)
    router = jax.random.normal(keys[1], (h, e), dt)
    gate, up = (0.05 * jax.random.normal(k, (e, h, i), dt) for k in keys[2:4])
    down = 0.05 * jax.random.normal(keys[4], (e, i, h), dt)
    times = {}
    for backend in candidates:
        fn = jax.jit(lambda x, r, g, u, d, b=backend: moe_block(
            x, r, g, u, d, top_k=cfg.num_experts_per_tok, norm_topk_prob=cfg.norm_topk_prob, backend=b)[0])
        fn(x, router, gate, up, down).block_until_ready()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x, router, gate, up, down).block_until_ready()
            samples.append(time.perf_counter() - start)
        times[backend] = sorted(samples)[len(samples) // 2] * 1e3
    return min(times, key=times.get), times
