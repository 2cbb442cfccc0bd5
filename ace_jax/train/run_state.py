"""Curriculum state in a train checkpoint: NumPy arrays by path + a JSON document for the rest."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ace_jax.curriculum import EvolvingBuffer

_ARRAY = "__array__"


def _split(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {_ARRAY: path}
    if isinstance(value, Mapping):
        return {str(k): _split(v, f"{path}/{k}", arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _join(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {_ARRAY}:
            return np.asarray(arrays[value[_ARRAY]])
        return {k: _join(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, arrays) for v in value]
    return value


def pack_curriculum(buffer: EvolvingBuffer, sampler_state: Mapping[str, Any], history: list[dict[str, Any]],
                    curriculum_log: Mapping[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) for `TrainCheckpointer.save`: buffer, sampler RNG, metric history and
    the curriculum metrics log (`MetricsLog.state_dict()`)."""
    arrays: dict[str, np.ndarray] = {}
    meta = {"buffer": _split(buffer.state_dict(), "buffer", arrays),
            "sampler": _split(dict(sampler_state), "sampler", arrays), "history": _split(history, "history", arrays)}
    if curriculum_log is not None:
        meta["curriculum_log"] = _split(dict(curriculum_log), "curriculum_log", arrays)
    return arrays, meta


def unpack_curriculum_log(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `MetricsLog` state saved by `pack_curriculum`, or None for a checkpoint without one."""
    return _join(meta["curriculum_log"], arrays) if "curriculum_log" in meta else None


def unpack_curriculum(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
    """(buffer, sampler state, history) restored exactly from `pack_curriculum`'s output."""
    buffer_state = _join(meta["buffer"], arrays)
    return (EvolvingBuffer.from_state_dict(buffer_state), _join(meta["sampler"], arrays),
            _join(meta["history"], arrays))
