"""Named model presets: the real Qwen3 checkpoints' architectures and tiny configs for tests."""

from __future__ import annotations

from typing import Any

from ace_jax.models.config import Qwen3Config

_QWEN3_30B_A3B = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
    num_attention_heads=32, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
    rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=False,
    model_type="qwen3_moe", num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
    norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=(),
)

PRESETS: dict[str, dict[str, Any]] = {
    "qwen3-30b-a3b": _QWEN3_30B_A3B,
    "qwen3-30b-a3b-2507": {**_QWEN3_30B_A3B, "rope_theta": 10_000_000.0, "max_position_embeddings": 262144},
    "qwen3-0.6b": dict(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True,
        model_type="qwen3", num_experts=0,
    ),
    # Tiny configs shared by tests (one compile each, cached). head_dim != hidden/heads on purpose.
    "tiny-moe": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, model_type="qwen3_moe",
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
        mlp_only_layers=(1,), max_position_embeddings=2048, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    "tiny-dense": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, model_type="qwen3",
        num_experts=0, tie_word_embeddings=True, max_position_embeddings=2048, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    # A small MoE for CPU benchmarks (hidden 512, 32 experts, top 4).
    "small-moe": dict(
        vocab_size=8192, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=64, model_type="qwen3_moe",
        num_experts=32, num_experts_per_tok=4, moe_intermediate_size=256, norm_topk_prob=True,
        max_position_embeddings=4096, rope_theta=1_000_000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
}


def get_config(name: str, **overrides: Any) -> Qwen3Config:
    """A preset by name, with optional field overrides (e.g. `moe_backend="dense"`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return Qwen3Config(**{**PRESETS[name], **overrides})
