"""Top-k alternatives per generated token (OpenAI's `top_logprobs`), by re-scoring the sequence.

The engine's decode loop keeps only the sampled token's logprob, so the alternatives come from
one teacher-forced forward pass over prompt + completion with the engine's current weights,
under the same distribution the engine reports: temperature-scaled, before top-k / top-p / min-p
filtering (temperature 1 for greedy requests). Lengths are padded to powers of two (one compile each).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ace_jax.inference import sampling
from ace_jax.inference.buckets import pow2_buckets, pick
from rollout.engine import EngineError


def _top(state, ids, valid, temperature, *, graphdef, k: int):
    model = nnx.merge(graphdef, state)
    logits = model(ids, valid)[0]                                  # [L, V]
    logprobs = sampling.scaled_logprobs(logits, jnp.full(logits.shape[:1], temperature))
    values, indices = jax.lax.top_k(logprobs, k)
    return indices, values


_top_jit = jax.jit(_top, static_argnames=("graphdef", "k"))


def top_logprobs(engine, prompt: Sequence[int], completion: Sequence[int], temperature: float,
                 k: int) -> list[list[tuple[int, float]]]:
    """For each completion token, the `k` most likely tokens at its position and their logprobs."""
    if not completion or k < 1:
        return [[] for _ in completion]
    if engine.state is None:
        raise EngineError("the engine's weights are released; call resume_memory_occupation first")
    seq = list(prompt) + list(completion)
    length = pick(len(seq), pow2_buckets(16, engine.config.max_position_embeddings), "sequence length")
    ids = np.zeros((1, length), np.int32)
    ids[0, :len(seq)] = seq
    valid = np.zeros((1, length), bool)
    valid[0, :len(seq)] = True
    indices, values = _top_jit(engine.state, ids, valid, float(temperature), graphdef=engine.graphdef, k=k)
    start = len(prompt) - 1                                        # the logits that predict completion[0]
    indices, values = np.asarray(indices)[start:len(seq) - 1], np.asarray(values)[start:len(seq) - 1]
    return [[(int(i), float(v)) for i, v in zip(row_i, row_v)] for row_i, row_v in zip(indices, values)]
