"""ace-jax: AceGRPO (adaptive-curriculum GRPO) for Qwen3 / Qwen3-MoE policies in JAX."""

__version__ = "0.1.0"
