"""Qwen3 / Qwen3-MoE configuration: read and write HF config.json, validate, presets."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

MODEL_TYPES = ("qwen3", "qwen3_moe")
MOE_BACKENDS = ("auto", "dense", "ragged", "blocked", "gmm", "sparse", "capacity")
REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")
ROUTER_DTYPES = ("compute", "float32")
SUPPORTED_LAYER_TYPES = ("full_attention",)

# Keys of config.json that we read; anything else is kept in `extra` and written back.
_IGNORED_HF_KEYS = {
    "architectures", "transformers_version", "use_cache", "initializer_range", "attention_dropout",
    "hidden_act", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
    "output_router_logits", "router_aux_loss_coef", "torch_dtype", "dtype", "attention_bias",
    "rope_scaling", "num_experts", "num_local_experts", "rope_theta", "rope_parameters",
}


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """Architecture of a Qwen3 (dense) or Qwen3-MoE model plus runtime options.

    Architecture fields follow transformers' names. `num_experts == 0` means dense.
    Runtime options (`param_dtype`, `compute_dtype`, `moe_backend`, `remat`) are not written
    to config.json.
    """

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 48
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    model_type: str = "qwen3_moe"
    num_experts: int = 128
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151645
    pad_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()  # every stop id (config.json / generation_config.json lists)
    # runtime options
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    moe_backend: str = "auto"
    remat: str = "none"
    # The router's gate matmul: in the compute dtype, as transformers and SGLang do (only the
    # softmax in fp32), or in float32.
    router_dtype: str = "compute"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mlp_only_layers", tuple(int(i) for i in self.mlp_only_layers))
        eos_ids = tuple(int(i) for i in self.eos_token_ids)
        if self.eos_token_id is not None and int(self.eos_token_id) not in eos_ids:
            eos_ids = (int(self.eos_token_id),) + eos_ids
        object.__setattr__(self, "eos_token_ids", eos_ids)
        self.validate()

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ValueError naming the key and the problem for any inconsistent value."""
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "max_position_embeddings")
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"config key {key!r} must be a positive integer, got {value!r}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"config key 'model_type' is {self.model_type!r}; supported: {list(MODEL_TYPES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"config key 'num_attention_heads' ({self.num_attention_heads}) must be a multiple of "
                f"'num_key_value_heads' ({self.num_key_value_heads})")
        if self.num_experts < 0:
            raise ValueError(f"config key 'num_experts' must be >= 0, got {self.num_experts}")
        if self.num_experts:
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ValueError(
                    f"config key 'num_experts_per_tok' must be in 1..num_experts ({self.num_experts}), "
                    f"got {self.num_experts_per_tok}")
            if self.moe_intermediate_size <= 0:
                raise ValueError(f"config key 'moe_intermediate_size' must be positive, got {self.moe_intermediate_size}")
            if self.decoder_sparse_step <= 0:
                raise ValueError(f"config key 'decoder_sparse_step' must be positive, got {self.decoder_sparse_step}")
        elif self.intermediate_size <= 0:
            raise ValueError(f"config key 'intermediate_size' must be positive, got {self.intermediate_size}")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"config key 'mlp_only_layers' has layer indices outside 0..{self.num_hidden_layers - 1}: {bad}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("config keys 'rms_norm_eps' and 'rope_theta' must be positive")
        for key, allowed in (("param_dtype", DTYPES), ("compute_dtype", DTYPES),
                             ("moe_backend", MOE_BACKENDS), ("remat", REMAT_POLICIES),
                             ("router_dtype", ROUTER_DTYPES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"config key {key!r} is {getattr(self, key)!r}; allowed: {list(allowed)}")

    # ----------------------------------------------------------------------------- structure
    @property
    def is_moe(self) -> bool:
        return self.model_type == "qwen3_moe" and self.num_experts > 0

    def layer_is_moe(self, index: int) -> bool:
        """Same rule as transformers' Qwen3MoeDecoderLayer."""
        return (self.is_moe and index not in self.mlp_only_layers
                and (index + 1) % self.decoder_sparse_step == 0)

    def layer_runs(self) -> list[tuple[bool, int, int]]:
        """Runs of identical layers as (is_moe, first_index, count); each run is one scan."""
        runs: list[tuple[bool, int, int]] = []
        for i in range(self.num_hidden_layers):
            moe = self.layer_is_moe(i)
            if runs and runs[-1][0] == moe:
                runs[-1] = (moe, runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((moe, i, 1))
        return runs

    @property
    def num_moe_layers(self) -> int:
        return sum(self.layer_is_moe(i) for i in range(self.num_hidden_layers))

    def replace(self, **changes: Any) -> "Qwen3Config":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------- HF I/O
    @classmethod
    def from_hf(cls, source: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> "Qwen3Config":
        """Build from a HF model directory, a config.json path, or a dict (old or new key spellings)."""
        if isinstance(source, Mapping):
            data = dict(source)
        else:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no config.json at {path}")
            with open(path) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        model_type = data.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r} in config; supported: {list(MODEL_TYPES)}")
        _refuse_unsupported_attention(data)
        eos_ids = _as_list(data.get("eos_token_id"))
        if not isinstance(source, Mapping):
            eos_ids += [i for i in _generation_eos_ids(path) if i not in eos_ids]
        rope = data.get("rope_parameters") or {}
        rope_theta = data.get("rope_theta", rope.get("rope_theta", 1_000_000.0))
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default" or data.get("rope_scaling"):
            raise ValueError(f"rope_parameters.rope_type {rope_type!r} is not supported (only 'default')")
        num_experts = data.get("num_experts", data.get("num_local_experts", 0)) if model_type == "qwen3_moe" else 0
        heads = data["num_attention_heads"]
        kwargs: dict[str, Any] = dict(
            vocab_size=data["vocab_size"],
            hidden_size=data["hidden_size"],
            intermediate_size=data.get("intermediate_size", 0),
            num_hidden_layers=data["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=data.get("num_key_value_heads", heads),
            head_dim=data.get("head_dim") or data["hidden_size"] // heads,
            rms_norm_eps=data.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position_embeddings=data.get("max_position_embeddings", 40960),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            model_type=model_type,
            num_experts=int(num_experts or 0),
            bos_token_id=data.get("bos_token_id"),
            eos_token_id=eos_ids[0] if eos_ids else None,
            pad_token_id=data.get("pad_token_id"),
            eos_token_ids=tuple(eos_ids),
        )
        if num_experts:
            kwargs.update(
                num_experts_per_tok=data.get("num_experts_per_tok", 8),
                moe_intermediate_size=data.get("moe_intermediate_size", 768),
                # transformers' class default is False; real checkpoints say True. Follow the file.
                norm_topk_prob=bool(data.get("norm_topk_prob", False)),
                decoder_sparse_step=data.get("decoder_sparse_step", 1) or 1,
                mlp_only_layers=tuple(data.get("mlp_only_layers") or ()),
            )
        if data.get("attention_bias"):
            raise ValueError("config key 'attention_bias' is true; Qwen3 has no attention biases")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self, dtype: str | None = None) -> dict[str, Any]:
        """config.json contents, with both old and new key spellings for older readers."""
        dtype = dtype or self.param_dtype
        out: dict[str, Any] = {
            "architectures": ["Qwen3MoeForCausalLM" if self.is_moe else "Qwen3ForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rope_scaling": None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_cache": True,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": self.num_hidden_layers,
            "initializer_range": 0.02,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype,
            "dtype": dtype,
        }
        if self.model_type == "qwen3_moe":
            out.update({
                "num_experts": self.num_experts,
                "num_local_experts": self.num_experts,
                "num_experts_per_tok": self.num_experts_per_tok,
                "moe_intermediate_size": self.moe_intermediate_size,
                "norm_topk_prob": self.norm_topk_prob,
                "decoder_sparse_step": self.decoder_sparse_step,
                "mlp_only_layers": list(self.mlp_only_layers),
                "output_router_logits": False,
                "router_aux_loss_coef": 0.001,
            })
        return out


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _generation_eos_ids(config_path: str) -> list[int]:
    """eos_token_id of the generation_config.json beside a config.json (Qwen3 lists two)."""
    path = os.path.join(os.path.dirname(config_path), "generation_config.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            return _as_list(json.load(f).get("eos_token_id"))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: eos_token_id is not an id or a list of ids: {exc}") from exc


def _refuse_unsupported_attention(data: Mapping[str, Any]) -> None:
    """Sliding-window attention and other layer types are not implemented: refuse them by name."""
    if data.get("use_sliding_window"):
        raise ValueError(f"config key 'use_sliding_window' is true (sliding_window={data.get('sliding_window')}); "
                         "only full attention is implemented")
    other = sorted({t for t in data.get("layer_types") or () if t not in SUPPORTED_LAYER_TYPES})
    if other:
        raise ValueError(f"config key 'layer_types' has {other}; supported: {list(SUPPORTED_LAYER_TYPES)}")
