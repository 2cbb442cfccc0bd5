"""Save / load the curriculum state (buffer + sampler) to a directory, exactly.

Arrays go to ``curriculum.npz`` (no pickle), everything else (config, clocks, counters, the
sampler's RNG state, in-memory payloads) to ``curriculum.json``. Both are written to temporary
names and renamed, so a crash never leaves a half-written state. A disk payload store keeps its
own JSONL file; loading truncates it to what the saved state knew.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .buffer import EvolvingBuffer
from .sampler import LearnabilitySampler

NPZ, META = "curriculum.npz", "curriculum.json"


def _split(obj: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """Replace every ndarray in a nested dict by a reference into ``arrays``."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if isinstance(obj, dict):
        return {k: _split(v, arrays, f"{prefix}/{k}") for k, v in obj.items()}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _join(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _join(v, arrays) for k, v in obj.items()}
    return obj


def save_state(directory: str | os.PathLike, buffer: EvolvingBuffer,
               sampler: LearnabilitySampler | None = None) -> None:
    """Write the buffer (and sampler) state into ``directory`` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta = {"buffer": _split(buffer.state_dict(), arrays, "buffer"),
            "sampler": None if sampler is None else _split(sampler.state_dict(), arrays, "sampler")}
    tmp_npz, tmp_meta = d / (NPZ + ".tmp.npz"), d / (META + ".tmp")
    np.savez(tmp_npz, **arrays)
    tmp_meta.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_npz, d / NPZ)
    os.replace(tmp_meta, d / META)


def load_state(directory: str | os.PathLike, payload_path: str | None = None
               ) -> tuple[EvolvingBuffer, LearnabilitySampler | None]:
    """Read what ``save_state`` wrote; returns (buffer, sampler or None)."""
    d = Path(directory)
    for name in (NPZ, META):
        if not (d / name).is_file():
            raise FileNotFoundError(f"curriculum state file {d / name} is missing")
    meta = json.loads((d / META).read_text(encoding="utf-8"))
    with np.load(d / NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    buffer = EvolvingBuffer.from_state_dict(_join(meta["buffer"], arrays), payload_path)
    sampler = None
    if meta["sampler"] is not None:
        sampler = LearnabilitySampler.from_state_dict(_join(meta["sampler"], arrays))
    return buffer, sampler
