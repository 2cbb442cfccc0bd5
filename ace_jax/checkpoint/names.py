"""The one declarative map between our parameters and Hugging Face Qwen3 / Qwen3-MoE tensors.

Each `Entry` ties one of our (possibly stacked) parameters to a HF key template and a layout
transform. The same table drives export (ours -> HF) and import (HF -> ours, slice by slice).
Layouts (ours):
- `copy`:      same layout as HF.
- `transpose`: ours = HF.T (HF linear [out, in] -> our kernel [in, out]).
- `heads_in`:  ours [H, N, D] from HF [N*D, H] (q/k/v projections).
- `heads_out`: ours [N, D, H] from HF [H, N*D] (o projection).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from ace_jax.models.config import Qwen3Config


@dataclasses.dataclass(frozen=True)
class Entry:
    """One of our parameters. `path` is (run index or None, attribute name); `hf` a key template
    with `{l}` (global layer index) and `{e}` (expert) placeholders; `stack` = leading axes that
    enumerate HF tensors: () global, ("layers",) one per layer, ("layers", "experts") per expert."""

    run: int | None
    attr: str
    hf: str
    layout: str
    stack: tuple[str, ...]
    first_layer: int = 0

    def hf_keys(self, index: tuple[int, ...]) -> str:
        """HF key for one element of the stacked leading axes."""
        fields = {}
        if self.stack:
            fields["l"] = self.first_layer + index[0]
        if len(self.stack) == 2:
            fields["e"] = index[1]
        return self.hf.format(**fields)


_ATTN = [
    ("input_norm", "model.layers.{l}.input_layernorm.weight", "copy"),
    ("post_norm", "model.layers.{l}.post_attention_layernorm.weight", "copy"),
    ("q_proj", "model.layers.{l}.self_attn.q_proj.weight", "heads_in"),
    ("k_proj", "model.layers.{l}.self_attn.k_proj.weight", "heads_in"),
    ("v_proj", "model.layers.{l}.self_attn.v_proj.weight", "heads_in"),
    ("o_proj", "model.layers.{l}.self_attn.o_proj.weight", "heads_out"),
    ("q_norm", "model.layers.{l}.self_attn.q_norm.weight", "copy"),
    ("k_norm", "model.layers.{l}.self_attn.k_norm.weight", "copy"),
]
_DENSE_MLP = [
    ("gate_proj", "model.layers.{l}.mlp.gate_proj.weight", "transpose"),
    ("up_proj", "model.layers.{l}.mlp.up_proj.weight", "transpose"),
    ("down_proj", "model.layers.{l}.mlp.down_proj.weight", "transpose"),
]
_EXPERTS = [
    ("gate_proj", "model.layers.{l}.mlp.experts.{e}.gate_proj.weight", "transpose"),
    ("up_proj", "model.layers.{l}.mlp.experts.{e}.up_proj.weight", "transpose"),
    ("down_proj", "model.layers.{l}.mlp.experts.{e}.down_proj.weight", "transpose"),
]


def name_map(cfg: Qwen3Config) -> list[Entry]:
    """Every parameter of a model with this config, in HF order."""
    entries = [Entry(None, "embed", "model.embed_tokens.weight", "copy", ())]
    for r, (is_moe, first, _count) in enumerate(cfg.layer_runs()):
        for attr, key, layout in _ATTN:
            entries.append(Entry(r, attr, key, layout, ("layers",), first))
        if is_moe:
            entries.append(Entry(r, "router", "model.layers.{l}.mlp.gate.weight", "transpose", ("layers",), first))
            for attr, key, layout in _EXPERTS:
                entries.append(Entry(r, attr, key, layout, ("layers", "experts"), first))
        else:
            for attr, key, layout in _DENSE_MLP:
                entries.append(Entry(r, attr, key, layout, ("layers",), first))
    entries.append(Entry(None, "final_norm", "model.norm.weight", "copy", ()))
    if not cfg.tie_word_embeddings:
        entries.append(Entry(None, "lm_head", "lm_head.weight", "transpose", ()))
    return entries


def iter_stack(entry: Entry, shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """All indices of the entry's stacked leading axes."""
    yield from np.ndindex(*shape[:len(entry.stack)])


def hf_shape(layout: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the HF tensor for one unstacked element of our parameter."""
    if layout == "copy":
        return ours
    if layout == "transpose":
        return ours[::-1]
    if layout == "heads_in":
        h, n, d = ours
        return (n * d, h)
    if layout == "heads_out":
        n, d, h = ours
        return (h, n * d)
    raise ValueError(f"unknown layout {layout!r}")


def to_hf(layout: str, value: np.ndarray) -> np.ndarray:
    """Our layout -> HF layout for one unstacked element."""
    if layout == "copy":
        return value
    if layout == "transpose":
        return value.T
    if layout == "heads_in":
        h, n, d = value.shape
        return value.reshape(h, n * d).T
    if layout == "heads_out":
        n, d, h = value.shape
        return value.reshape(n * d, h).T
    raise ValueError(f"unknown layout {layout!r}")


def read_slice(layout: str, ours: tuple[int, ...], get, index: tuple[slice, ...]) -> np.ndarray:
    """Read our-layout slice `index` (slices over the unstacked dims) via `get(hf_index)`, which
    returns that slice of the HF tensor. Only the needed rows/columns are read."""
    if layout == "copy":
        return np.asarray(get(index))
    if layout == "transpose":
        return np.asarray(get(index[::-1])).T
    if layout == "heads_in":
        h, n, d = ours
        sh, sn, sd = (s.indices(m) for s, m in zip(index, ours))
        rows = slice(sn[0] * d, sn[1] * d)
        block = np.asarray(get((rows, slice(*sh[:2]))))           # [n' * d, h']
        block = block.reshape(sn[1] - sn[0], d, -1)[:, sd[0]:sd[1]]
        return np.transpose(block, (2, 0, 1))
    if layout == "heads_out":
        n, d, h = ours
        sn, sd, sh = (s.indices(m) for s, m in zip(index, ours))
        cols = slice(sn[0] * d, sn[1] * d)
        block = np.asarray(get((slice(*sh[:2]), cols)))           # [h', n' * d]
        block = block.reshape(-1, sn[1] - sn[0], d)[:, :, sd[0]:sd[1]]
        return np.transpose(block, (1, 2, 0))
    raise ValueError(f"unknown layout {layout!r}")
