"""The GRPO update step: jit-compiled, state donated, micro-batch accumulation by `lax.scan`.

Per micro-batch: forward to final hidden states, chunked fp32 logprobs (logits / temperature),
`policy_loss_terms` (sum, count) pairs. The gradient is that of the summed loss divided by the
whole batch's count, so accumulation over micro-batches (and devices) equals one big batch.
An update whose loss or gradients are non-finite is skipped and counted.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ace_jax.grpo import LossConfig, add_terms, chunked_logprobs, finalize_terms, loss_count, policy_loss_terms
from ace_jax.models.constraints import active, gather_weight
from ace_jax.train.batch import TrainBatch
from ace_jax.train.state import TrainState
from sharding.rules import batch_spec


def sequence_logprobs(graphdef: nnx.GraphDef, params: nnx.State, input_ids: jax.Array,
                      attention_mask: jax.Array, *, temperature: float = 1.0, chunk_size: int = 1024,
                      return_entropy: bool = False, completion_start: jax.Array | None = None,
                      completion_window: int | None = None, routed_experts: jax.Array | None = None):
    """logprob[b, t] of token t given tokens < t ([B, T], column 0 is 0), optionally entropy.

    With `completion_start` [B] (first completion index per row) and a static
    `completion_window` W, the LM head runs only on tokens start..start+W-1 of each row (the
    completion; prompts are often longer than answers); other positions are 0.
    `routed_experts` [B, T, moe_layers, k] replays the engine's routing (R3)."""
    model = nnx.merge(graphdef, params)
    out = model.forward(input_ids, attention_mask, routed_experts=routed_experts, compute_logits=False)
    b, t = input_ids.shape
    # Chunk along each sequence (vmap over rows) so the batch axis stays sharded on a mesh; the
    # per-row chunk keeps each device's working set near `chunk_size` tokens for its own rows.
    row_chunk = max(16, chunk_size // local_rows(b, t))
    head = compute_head(model, out.hidden.dtype)
    one = lambda h, y: chunked_logprobs(h[None], head, y[None], temperature=temperature,  # noqa: E731
                                        chunk_size=row_chunk, return_entropy=return_entropy)
    windowed = completion_start is not None and completion_window is not None and completion_window < t - 1
    if windowed:
        pos = jnp.clip(completion_start[:, None] + jnp.arange(completion_window)[None], 1, t - 1)  # [B, W]
        hidden = jnp.take_along_axis(out.hidden, (pos - 1)[..., None], axis=1)
        targets = jnp.take_along_axis(input_ids, pos, axis=1)
    else:
        hidden, targets = out.hidden[:, :-1], input_ids[:, 1:]
    result = jax.vmap(one)(hidden, targets)
    result = tuple(r[:, 0] for r in result) if return_entropy else (result[:, 0],)
    if windowed:
        rows = jnp.arange(b)[:, None]
        place = lambda x: jnp.zeros((b, t), x.dtype).at[rows, pos].set(x)  # noqa: E731
    else:
        place = lambda x: jnp.pad(x, ((0, 0), (1, 0)))  # noqa: E731
    placed = tuple(place(r) for r in result)
    return placed if return_entropy else placed[0]


def local_rows(rows: int, seq_len: int) -> int:
    """Rows of a [rows, seq_len] batch array on one device: `rows` over the mesh axes the active
    sharding hooks' batch rule splits it on (`rows` without hooks)."""
    hooks = active()
    mesh, rules = getattr(hooks, "mesh", None), getattr(hooks, "rules", None)
    if mesh is None or rules is None:
        return rows
    spec = batch_spec(mesh, rules, (rows, seq_len))
    axes = spec[0] if len(spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return rows // math.prod(mesh.shape[a] for a in axes)


def compute_head(model: Any, dtype: Any) -> jax.Array:
    """The LM head [H, V] in the compute dtype (as forward and the engine), cast where it is
    sharded and gathered once for every chunk (in that dtype, as bits for bf16)."""
    return gather_weight(model.lm_head_weight(), ("embed", "vocab"), dtype)


def first_completion_index(loss_mask: jax.Array) -> jax.Array:
    """[B] index of each row's first loss token (1 for a row without any)."""
    return jnp.maximum(jnp.argmax(loss_mask > 0, axis=1), 1).astype(jnp.int32)


def _split_micro(batch: TrainBatch, micro_batches: int) -> TrainBatch:
    b = batch.input_ids.shape[0]
    if b % micro_batches:
        raise ValueError(f"batch size {b} is not divisible by micro_batches={micro_batches}")
    return jax.tree.map(lambda x: x.reshape((micro_batches, b // micro_batches) + x.shape[1:]), batch)


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, loss_config: LossConfig,
                    *, micro_batches: int = 1, temperature: float = 1.0, logprob_chunk: int = 1024,
                    learning_rate: Callable[[jax.Array], jax.Array] | None = None,
                    state_sharding: Any = None, batch_sharding: Any = None, donate: bool = True,
                    completion_window: int | None = None):
    """(state, batch) -> (state, metrics), jit-compiled; shardings optional (unsharded default).

    `completion_window` (e.g. rollout.max_new_tokens): no completion is longer, so the LM head
    runs on that many tokens per row instead of the whole sequence."""
    def micro_loss(params, ref_params, mb: TrainBatch, n):
        routed = mb.routed_experts if loss_config.routing_replay else None
        window = dict(completion_start=first_completion_index(mb.loss_mask), completion_window=completion_window,
                      routed_experts=routed)
        logprobs, entropy = sequence_logprobs(graphdef, params, mb.input_ids, mb.attention_mask,
                                              temperature=temperature, chunk_size=logprob_chunk,
                                              return_entropy=True, **window)
        ref = None
        if loss_config.kl_coef > 0:
            ref = jax.lax.stop_gradient(sequence_logprobs(
                graphdef, ref_params, mb.input_ids, mb.attention_mask,
                temperature=temperature, chunk_size=logprob_chunk, **window))
        # Old logprobs: the behaviour policy's (the engine's) or the proximal (current) policy's.
        old = mb.rollout_logprobs if loss_config.old_logprobs == "behaviour" else logprobs
        terms = policy_loss_terms(
            logprobs, jax.lax.stop_gradient(old), mb.advantages, mb.loss_mask, config=loss_config,
            ref_logprobs=ref, rollout_logprobs=mb.rollout_logprobs,
            entropy=jax.lax.stop_gradient(entropy))
        valid = mb.loss_mask.astype(bool)
        diff_max = jnp.max(jnp.where(valid, jnp.abs(jax.lax.stop_gradient(logprobs) - mb.rollout_logprobs), 0.0))
        return terms["loss"][0] / n, (terms, diff_max)

    grad_fn = jax.grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: TrainBatch):
        n = jnp.maximum(loss_count(batch.loss_mask, loss_config), 1).astype(jnp.float32)
        micro = _split_micro(batch, micro_batches)
        first = jax.tree.map(lambda x: x[0], micro)
        terms_shape = jax.eval_shape(lambda: micro_loss(state.params, state.ref_params, first, n)[1][0])
        zero_terms = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), terms_shape)
        zero_grads = jax.tree.map(jnp.zeros_like, state.params)

        def body(carry, mb):
            grads, terms, diff_max = carry
            g, (t, d) = grad_fn(state.params, state.ref_params, mb, n)
            return (jax.tree.map(jnp.add, grads, g), add_terms(terms, t), jnp.maximum(diff_max, d)), None

        (grads, terms, diff_max), _ = jax.lax.scan(body, (zero_grads, zero_terms, jnp.zeros(())), micro)
        metrics = finalize_terms(terms)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        new_state = state._replace(
            params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state),
            step=state.step + finite.astype(jnp.int32), skipped=state.skipped + (~finite).astype(jnp.int32))
        metrics.update(grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32), loss_tokens=n,
                       rollout_logprob_abs_diff_max=diff_max)
        if learning_rate is not None:
            metrics["learning_rate"] = learning_rate(state.step)
        return new_state, metrics

    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if state_sharding is not None or batch_sharding is not None:
        kwargs["in_shardings"] = (state_sharding, batch_sharding)
        kwargs["out_shardings"] = (state_sharding, None)
    return jax.jit(step, **kwargs)
