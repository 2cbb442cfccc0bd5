"""ace-jax: AceGRPO (adaptive-curriculum GRPO) for Qwen3 / Qwen3-MoE policies in JAX."""

from ace_jax._platform import choose_platforms

choose_platforms()

__version__ = "0.1.0"
