"""Fixed-shape update batches: token arrays padded to a small set of length buckets."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class TrainBatch(NamedTuple):
    """One GRPO update batch; token arrays are [B, T] aligned with `input_ids`.

    `loss_mask` marks completion tokens (prompt and padding are 0); `attention_mask` marks
    real tokens; `rollout_logprobs[b, t]` is the engine's logprob of token t (0 where unused);
    `advantages` is one value per sequence (0 for masked-out groups). `routed_experts`
    [B, T, moe_layers, k] (optional) are the experts the engine routed token t to, for routing
    replay (R3); positions the engine never ran (the last token, padding) hold expert 0.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    advantages: np.ndarray
    rollout_logprobs: np.ndarray
    routed_experts: np.ndarray | None = None


def bucket_length(length: int, buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> int:
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"sequence length {length} exceeds the largest bucket {max(buckets)}")


def pad_to_bucket(batch: TrainBatch, buckets: tuple[int, ...] = DEFAULT_BUCKETS,
                  pad_id: int = 0) -> TrainBatch:
    """Right-pad every token array to the smallest bucket >= the batch's length."""
    t = batch.input_ids.shape[1]
    target = bucket_length(t, buckets)
    if target == t:
        return batch

    def pad(x, value):
        x = np.asarray(x)
        return np.pad(x, ((0, 0), (0, target - t)) + ((0, 0),) * (x.ndim - 2), constant_values=value)

    routed = None if batch.routed_experts is None else pad(batch.routed_experts, 0)
    return TrainBatch(pad(batch.input_ids, pad_id), pad(batch.attention_mask, 0), pad(batch.loss_mask, 0),
                      np.asarray(batch.advantages), pad(batch.rollout_logprobs, 0.0), routed)


def make_batch(prompts: list[list[int]], completions: list[list[int]], advantages,
               rollout_logprobs: list[list[float]] | None = None, pad_id: int = 0,
               buckets: tuple[int, ...] = DEFAULT_BUCKETS,
               routed_experts: list[np.ndarray] | None = None) -> TrainBatch:
    """Concatenate prompt + completion per row, right-padded to a length bucket.

    `routed_experts[i]` is the engine's [len(prompt) + len(completion) - 1, moe_layers, k]
    routing of row i (every token it ran); it is aligned to positions 0.. of the row."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    length = bucket_length(max(len(p) + len(c) for p, c in zip(prompts, completions)), buckets)
    b = len(prompts)
    ids = np.full((b, length), pad_id, np.int32)
    attn = np.zeros((b, length), np.int32)
    loss = np.zeros((b, length), np.int32)
    lps = np.zeros((b, length), np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        ids[i, :n] = list(p) + list(c)
        attn[i, :n] = 1
        loss[i, len(p):n] = 1
        if rollout_logprobs is not None:
            if len(rollout_logprobs[i]) != len(c):
                raise ValueError(f"row {i}: {len(rollout_logprobs[i])} logprobs for {len(c)} completion tokens")
            lps[i, len(p):n] = rollout_logprobs[i]
    routed = None if routed_experts is None else _routed_array(routed_experts, prompts, completions, length)
    return TrainBatch(ids, attn, loss, np.asarray(advantages, np.float32), lps, routed)


def _routed_array(routed_experts: list[np.ndarray], prompts: list[list[int]], completions: list[list[int]],
                  length: int) -> np.ndarray:
    """[B, length, moe_layers, k] int32 from per-row engine routings (zeros where never run)."""
    if len(routed_experts) != len(prompts):
        raise ValueError(f"{len(routed_experts)} routed_experts rows for {len(prompts)} sequences")
    shapes = {np.asarray(r).shape[1:] for r in routed_experts}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"routed_experts rows must all be [tokens, moe_layers, k], got trailing shapes {shapes}")
    out = np.zeros((len(prompts), length) + next(iter(shapes)), np.int32)
    for i, (r, p, c) in enumerate(zip(routed_experts, prompts, completions)):
        r, ran = np.asarray(r), len(p) + len(c) - 1
        if r.shape[0] != ran:
            raise ValueError(f"row {i}: routed_experts covers {r.shape[0]} tokens, the engine ran {ran} "
                             f"(prompt {len(p)} + completion {len(c)} - 1)")
        out[i, :ran] = r
    return out
