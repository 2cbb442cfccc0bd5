"""Pick the decode MoE backend by measurement: time one MoE block per backend at a model's shapes.

The backends compute the same values to float rounding, not bit for bit, so the choice is part
of what a seed reproduces. It is made once per machine and kept in
$ACE_JAX_HOME/moe-choice.json (delete the file to measure again): a rerun, a resumed run and a
comparison of two runs decode with the same backend whatever the load when they start (a file
lock lets one process measure at a time). With several processes (one SPMD engine program)
process 0's choice is taken by all.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ace_jax.models.config import Qwen3Config
from ace_jax.models.moe import moe_block
from rollout.machine_files import home, locked

DECODE_CANDIDATES = ("dense", "blocked", "ragged", "sparse", "capacity")
STORE_FILE = "moe-choice.json"
_CHOICES: dict[str, tuple[str, dict[str, float]]] = {}


def fastest_backend(cfg: Qwen3Config, tokens: int, candidates: tuple[str, ...] = DECODE_CANDIDATES,
                    repeats: int = 5, store: Path | None = None) -> tuple[str, dict[str, float]]:
    """The fastest backend for a MoE block forward on `tokens` rows (a decode step's batch) with
    `cfg`'s expert shapes and compute dtype, and each backend's median ms: read from `store`
    (default $ACE_JAX_HOME/moe-choice.json) when this machine measured the shape before, else
    measured and stored."""
    if not cfg.is_moe:
        raise ValueError("fastest_backend needs a MoE config")
    key = choice_key(cfg, tokens, candidates)
    if key not in _CHOICES:
        path = store if store is not None else home() / STORE_FILE
        with locked(path.with_name(path.name + ".lock")):  # one measures at a time, the others read it
            stored = _read(path).get(key)
            if isinstance(stored, dict) and stored.get("backend") in candidates:
                choice = stored["backend"], stored["ms"]
            else:
                choice = _measure(cfg, tokens, candidates, repeats)
                _write(path, key, choice)
        _CHOICES[key] = _agree(choice, candidates)
    return _CHOICES[key]


def choice_key(cfg: Qwen3Config, tokens: int, candidates: tuple[str, ...]) -> str:
    """The store's key: expert shapes, dtype, decode batch, candidates, platform, device, jax."""
    device = jax.devices()[0]
    return "|".join(map(str, (cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok,
                              cfg.moe_intermediate_size, cfg.compute_dtype, tokens, ",".join(candidates),
                              device.platform, device.device_kind, jax.local_device_count(), jax.__version__)))


def _agree(choice: tuple[str, dict[str, float]], candidates: tuple[str, ...]) -> tuple[str, dict[str, float]]:
    """Process 0's backend on every process (the engine is one program across processes)."""
    if jax.process_count() == 1:
        return choice
    from jax.experimental import multihost_utils
    index = int(multihost_utils.broadcast_one_to_all(np.int32(candidates.index(choice[0]))))
    return candidates[index], choice[1]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:   # a damaged file is measured over, not trusted
        print(f"ignoring {path} ({e}); measuring the decode MoE backend again", flush=True)
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, choice: tuple[str, dict[str, float]]) -> None:
    """Add `key` to the store (under the lock; a temporary file renamed over it)."""
    data = _read(path)
    data[key] = {"backend": choice[0], "ms": choice[1], "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


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
