"""Qwen3 / Qwen3-MoE policy models."""

from ace_jax.models.config import Qwen3Config
from ace_jax.models.presets import PRESETS, get_config
from ace_jax.models.qwen3 import KVCache, ModelOutput, Qwen3ForCausalLM, RouterStats

__all__ = ["Qwen3Config", "Qwen3ForCausalLM", "get_config", "PRESETS", "KVCache", "ModelOutput", "RouterStats"]
