"""Sequence lengths of a run, all from its config: the prompt room, the engine's buckets, the
train buckets. A config whose lengths cannot fit is refused at load, naming the keys."""

from __future__ import annotations

from ace_jax.inference.buckets import Buckets, pow2_buckets

# The chat template's tokens around the system and user text (Qwen3: about 20).
CHAT_TEMPLATE_RESERVE = 32


class LengthError(ValueError):
    """Lengths in a config that cannot fit together; the message names the keys."""


def prompt_limit(cfg) -> int:
    """The longest prompt a step may send: the code-mode budget, or (spec mode) the room the
    largest train bucket leaves after `rollout.max_new_tokens`."""
    if cfg.env.mode == "code":
        return cfg.env.prompt_budget_tokens
    return max(cfg.train.length_buckets) - cfg.rollout.max_new_tokens


def check_lengths(cfg, max_position_embeddings: int | None = None) -> None:
    """Refuse lengths that cannot fit: prompt + new tokens within the largest train bucket
    (and the model's positions, when known)."""
    longest = max(cfg.train.length_buckets)
    new = cfg.rollout.max_new_tokens
    if new < 1:
        raise LengthError(f"config key 'rollout.max_new_tokens' must be >= 1, got {new}")
    if cfg.env.mode == "code":
        budget = cfg.env.prompt_budget_tokens
        if budget <= CHAT_TEMPLATE_RESERVE:
            raise LengthError(f"config key 'env.prompt_budget_tokens' ({budget}) must exceed the chat template's "
                              f"{CHAT_TEMPLATE_RESERVE} tokens")
        if budget + new > longest:
            raise LengthError(
                f"config keys 'env.prompt_budget_tokens' ({budget}) + 'rollout.max_new_tokens' ({new}) = {budget + new} "
                f"exceed the largest of 'train.length_buckets' ({longest}): a full prompt and answer could not be trained on")
    elif new >= longest:
        raise LengthError(f"config key 'rollout.max_new_tokens' ({new}) leaves no room for a prompt in the largest "
                          f"of 'train.length_buckets' ({longest})")
    if max_position_embeddings is not None and prompt_limit(cfg) + new > max_position_embeddings:
        raise LengthError(
            f"config keys 'env.prompt_budget_tokens'/'train.length_buckets' and 'rollout.max_new_tokens' allow "
            f"{prompt_limit(cfg) + new} tokens, more than the model's max_position_embeddings ({max_position_embeddings})")


def engine_buckets(cfg, rows_per_step: int) -> Buckets:
    """The embedded engine's buckets: prompts up to `prompt_limit`, generations up to
    `rollout.max_new_tokens`, batches up to the step's rows (at most 32 per chunk)."""
    max_batch = min(rows_per_step, 32)
    return Buckets(batch=pow2_buckets(1, max_batch),
                   prompt=pow2_buckets(16, prompt_limit(cfg)),
                   generate=pow2_buckets(min(16, cfg.rollout.max_new_tokens), cfg.rollout.max_new_tokens))
