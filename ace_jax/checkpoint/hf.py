"""Hugging Face safetensors import and export for Qwen3 / Qwen3-MoE.

`load` streams tensors one at a time (optionally only each device's slice, via
`jax.make_array_from_callback`), checks every name and shape first, and reports missing,
unexpected and mis-shaped tensors together. `save` plans shards by size and writes one file at
a time, gathering only that file's tensors.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from ace_jax.checkpoint import names
from ace_jax.models.config import Qwen3Config
from ace_jax.models.qwen3 import Qwen3ForCausalLM

INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}

_SOURCES: "weakref.WeakKeyDictionary[Qwen3ForCausalLM, str]" = weakref.WeakKeyDictionary()

ShardingFn = Callable[[tuple[str, ...], tuple[int, ...]], "jax.sharding.Sharding | None"]


class CheckpointError(ValueError):
    """A HF checkpoint directory that cannot be loaded; the message lists every problem."""


# ------------------------------------------------------------------------------------ reading
class SafetensorsReader:
    """Key -> file lookup over a HF directory, with lazily opened handles."""

    def __init__(self, hf_dir: str):
        self.dir = hf_dir
        index_path = os.path.join(hf_dir, INDEX_FILE)
        if os.path.isfile(index_path):
            try:
                with open(index_path) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index_path} is not a valid safetensors index: {exc}") from exc
            self.files = dict(weight_map)
            missing_files = sorted({f for f in self.files.values() if not os.path.isfile(os.path.join(hf_dir, f))})
            if missing_files:
                raise CheckpointError(f"{index_path} names files that do not exist: {missing_files}")
        else:
            shards = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
            if not shards:
                raise CheckpointError(f"no *.safetensors files in {hf_dir}")
            self.files = {}
            for shard in shards:
                with self._open_file(shard) as handle:
                    for key in handle.keys():
                        self.files[key] = shard
        self._handles: dict[str, Any] = {}

    def _open_file(self, name: str):
        path = os.path.join(self.dir, name)
        try:
            return safe_open(path, framework="numpy")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc

    def _handle(self, key: str):
        name = self.files[key]
        if name not in self._handles:
            self._handles[name] = self._open_file(name).__enter__()
        return self._handles[name]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle(key).get_slice(key).get_shape())

    def get(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return self._handle(key).get_slice(key)[index]
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {key!r} from {self.files[key]}: {exc}") from exc

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()


def _variable(model: Qwen3ForCausalLM, entry: names.Entry) -> nnx.Variable:
    owner = model if entry.run is None else model.runs[entry.run]
    return getattr(owner, entry.attr)


def _check(reader: SafetensorsReader, model, entries: list[names.Entry]) -> None:
    expected: dict[str, tuple[int, ...]] = {}
    for entry in entries:
        shape = tuple(_variable(model, entry).shape)
        inner = shape[len(entry.stack):]
        for idx in names.iter_stack(entry, shape):
            expected[entry.hf_keys(idx)] = names.hf_shape(entry.layout, inner)
    present = set(reader.files)
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected) - _redundant_tied_head(reader, model.config))
    misshaped = [f"{k}: file {reader.shape(k)} vs expected {expected[k]}"
                 for k in sorted(set(expected) & present) if reader.shape(k) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {_abbrev(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors ({len(misshaped)}): {_abbrev(misshaped)}")
    if problems:
        raise CheckpointError(f"checkpoint {reader.dir} does not match its config.json:\n  " + "\n  ".join(problems))


def _redundant_tied_head(reader: SafetensorsReader, cfg: Qwen3Config) -> set[str]:
    """{'lm_head.weight'} when a tied checkpoint still stores the head and it equals the
    embedding (some exporters write both); a head that differs is an error, not ignored."""
    key, embed = "lm_head.weight", "model.embed_tokens.weight"
    if not cfg.tie_word_embeddings or key not in reader.files or embed not in reader.files:
        return set()
    full = (slice(None), slice(None))
    if reader.shape(key) != reader.shape(embed) or not np.array_equal(reader.get(key, full), reader.get(embed, full)):
        raise CheckpointError(f"checkpoint {reader.dir}: tie_word_embeddings is true but {key} differs from {embed}")
    return {key}


def _abbrev(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _read(reader: SafetensorsReader, entry: names.Entry, shape: tuple[int, ...],
          index: tuple[slice, ...], dtype) -> np.ndarray:
    """Our-layout slice `index` of a (stacked) parameter, read tensor by tensor into one
    preallocated array (no second host copy of stacked experts)."""
    n_stack = len(entry.stack)
    stack_ranges = [range(*s.indices(m)) for s, m in zip(index[:n_stack], shape[:n_stack])]
    inner_shape, inner_index = shape[n_stack:], tuple(index[n_stack:])
    read = lambda real: names.read_slice(  # noqa: E731
        entry.layout, inner_shape, lambda hf_idx: reader.get(entry.hf_keys(real), hf_idx), inner_index)
    if not n_stack:
        return read(()).astype(dtype, copy=False)
    out = None
    for stack_idx in np.ndindex(*(len(r) for r in stack_ranges)):
        block = read(tuple(r[i] for r, i in zip(stack_ranges, stack_idx)))
        if out is None:
            out = np.empty(tuple(len(r) for r in stack_ranges) + block.shape, dtype)
        out[stack_idx] = block
    return out


def load(hf_dir: str | os.PathLike, dtype: str = "float32", *, sharding_for: ShardingFn | None = None,
         mesh=None, rules=None, **config_overrides: Any) -> Qwen3ForCausalLM:
    """HF directory -> model. Each tensor is streamed; with `mesh` and `rules` (or a custom
    `sharding_for(logical_axes, shape)`), each device's shard is filled from only the slices it needs."""
    hf_dir = os.fspath(hf_dir)
    if not os.path.isdir(hf_dir):
        raise CheckpointError(f"HF checkpoint directory {hf_dir} does not exist")
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise CheckpointError(f"{hf_dir} has no config.json (is it a Hugging Face model directory?)")
    dtype = config_overrides.pop("param_dtype", dtype)  # `model.overrides` may name it too
    if dtype not in _NP_DTYPES:
        raise CheckpointError(f"param_dtype {dtype!r} is not supported; allowed: {sorted(_NP_DTYPES)}")
    overrides = {"param_dtype": dtype, "compute_dtype": config_overrides.pop("compute_dtype", dtype)}
    cfg = Qwen3Config.from_hf(hf_dir, **overrides, **config_overrides)
    if sharding_for is None and mesh is not None:
        from sharding.rules import sharding_fn  # optional: only with a mesh
        sharding_for = sharding_fn(mesh, rules)
    np_dtype = _NP_DTYPES[dtype]
    model = nnx.eval_shape(lambda: Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    reader = SafetensorsReader(hf_dir)
    try:
        entries = names.name_map(cfg)
        _check(reader, model, entries)
        for entry in entries:
            var = _variable(model, entry)
            shape = tuple(var.shape)
            sharding = sharding_for(var.get_metadata("logical_axes"), shape) if sharding_for else None
            if sharding is None:
                full = tuple(slice(None) for _ in shape)
                value = jnp.asarray(_read(reader, entry, shape, full, np_dtype))
            else:
                value = jax.make_array_from_callback(
                    shape, sharding, lambda idx, e=entry, s=shape: _read(reader, e, s, idx, np_dtype))
            var.set_value(value)
    finally:
        reader.close()
    _SOURCES[model] = hf_dir
    return model


def source_dir(model: Qwen3ForCausalLM) -> str | None:
    """The HF directory a model was loaded from (kept outside the module so that models from
    different directories share one graph, and compiled functions)."""
    return _SOURCES.get(model)


# ------------------------------------------------------------------------------------ writing
def parse_size(size: int | str) -> int:
    """'5GB' -> 5e9 bytes (decimal units, as transformers); 'MiB'-style binary units too."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size {size!r} is not a size like '5GB' or '500MB'")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    powers = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    return int(number * powers[unit])


def plan_shards(model: Qwen3ForCausalLM, max_shard_size: int | str, dtype: str):
    """[[(hf key, entry, stack index), ...] per file] with each file <= max_shard_size bytes."""
    limit = parse_size(max_shard_size)
    itemsize = np.dtype(_NP_DTYPES[dtype]).itemsize
    files, current, current_bytes = [], [], 0
    for entry in names.name_map(model.config):
        shape = tuple(_variable(model, entry).shape)
        nbytes = math.prod(shape[len(entry.stack):]) * itemsize
        for idx in names.iter_stack(entry, shape):
            if current and current_bytes + nbytes > limit:
                files.append(current)
                current, current_bytes = [], 0
            current.append((entry.hf_keys(idx), entry, idx))
            current_bytes += nbytes
    if current:
        files.append(current)
    return files


def save(model: Qwen3ForCausalLM, out_dir: str | os.PathLike, max_shard_size: int | str = "5GB",
         dtype: str = "bfloat16", tokenizer_dir: str | None = None) -> list[str]:
    """Write sharded safetensors + index, config.json, generation_config.json, tokenizer files."""
    if dtype not in _NP_DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; allowed: {sorted(_NP_DTYPES)}")
    out_dir = os.fspath(out_dir)
    writer = jax.process_index() == 0  # every process gathers (a collective), process 0 writes
    if writer:
        os.makedirs(out_dir, exist_ok=True)
    files = plan_shards(model, max_shard_size, dtype)
    np_dtype = _NP_DTYPES[dtype]
    weight_map, total, written = {}, 0, []
    for i, shard in enumerate(files):
        name = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        tensors = {}
        for key, entry, idx in shard:
            value = _variable(model, entry)[...]
            piece = _to_host(value[idx] if idx else value)
            tensors[key] = np.ascontiguousarray(names.to_hf(entry.layout, piece).astype(np_dtype))
            weight_map[key] = name
            total += tensors[key].nbytes
        if writer:
            save_file(tensors, os.path.join(out_dir, name), metadata={"format": "pt"})
        written.append(name)
        del tensors
    if not writer:
        return written
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    cfg = model.config
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg.to_hf(dtype), f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation_config(cfg), f, indent=2)
    source = tokenizer_dir or source_dir(model)
    if source:
        copy_tokenizer_files(source, out_dir)
    return written


def _to_host(value: jax.Array) -> np.ndarray:
    """A whole array on this host, also when it spans several processes (all-gathered)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(jax.device_get(value))


def generation_config(cfg: Qwen3Config) -> dict[str, Any]:
    """Qwen3's published sampling defaults; training requests always override them."""
    eos = list(cfg.eos_token_ids)
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos if len(eos) > 1 else cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id, "do_sample": True, "temperature": 0.6,
            "top_p": 0.95, "top_k": 20}


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        path = os.path.join(src, name)
        if os.path.isfile(path) and os.path.abspath(src) != os.path.abspath(dst):
            shutil.copy2(path, os.path.join(dst, name))
            copied.append(name)
    return copied
