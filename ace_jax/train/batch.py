"""Fixed-shape update batches: token arrays padded to a small set of length buckets."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class TrainBatch(NamedTuple):
    """One GRPO update batch; token arrays are [B, T] aligned with `input_ids`.

    `loss_mask` marks completion tokens (prompt and padding are 0); `attention_mask` marks
    real tokens; `rollout_logprobs[b, t]` is the engine's logprob of token t (0 where unused);
    `advantages` is one value per sequence (0 for masked-out groups).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    advantages: np.ndarray
    rollout_logprobs: np.ndarray


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
        return np.pad(np.asarray(x), ((0, 0), (0, target - t)), constant_values=value)

    return TrainBatch(pad(batch.input_ids, pad_id), pad(batch.attention_mask, 0), pad(batch.loss_mask, 0),
                      np.asarray(batch.advantages), pad(batch.rollout_logprobs, 0.0))


def make_batch(prompts: list[list[int]], completions: list[list[int]], advantages,
               rollout_logprobs: list[list[float]] | None = None, pad_id: int = 0,
               buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> TrainBatch:
    """Concatenate prompt + completion per row, right-padded to a length bucket."""
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
    return TrainBatch(ids, attn, loss, np.asarray(advantages, np.float32), lps)
