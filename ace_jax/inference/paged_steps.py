"""The compiled device steps of the continuous-batching engine, all on a paged KV pool.

- `prefill`: prompts [B, P] (right-padded) written into their pool blocks from slot `starts`
  (default 0; a preempted row's generated tokens are recomputed after its prompt); no logits.
- `copy_blocks`: copy-on-write of forked groups' partial prompt blocks.
- `decode_chunk`: `steps` decode steps for up to B rows (with `shared`, the (tables, lengths,
  group) of a `SharedPrefix`: `tables` are then the rows' private blocks); each feeds its last token at its
  position, samples the next one (PRNG key of row seed s and step t: fold_in(fold_in(key(s), 0), t),
  as the static engine) and stops on a stop token or its max_new_tokens.

With `layers` (the model's `layer_params()`) the steps run the layers unrolled on a per-layer pool
(`init_paged_cache(per_layer=True)`); else scanned on the stacked pool.
The pool is donated to each step (updated in place). Shapes come from small bucket sets, so the
number of compiled functions stays bounded (`TRACES` counts traces).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ace_jax.inference import sampling
from ace_jax.models.paged import SharedPrefix

TRACES = [0]


def _prefill(state, pool, ids, lengths, tables, layers=None, starts=None, *, graphdef, routed: bool):
    TRACES[0] += 1  # runs only while tracing
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    index = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    positions = index if starts is None else index + starts[:, None]
    out = model.forward(ids, None, positions, cache=pool, cache_slots=positions, block_tables=tables,
                        token_valid=index < lengths[:, None], compute_logits=False, layers=layers)
    return out.cache, (out.router.expert_ids if routed else None)


def _copy_blocks(pool, src, dst):
    TRACES[0] += 1

    def copy(kv):  # per-layer [blocks, ...] or stacked [layers, blocks, ...]
        return kv.at[dst].set(kv[src]) if kv.ndim == 4 else kv.at[:, dst].set(kv[:, src])

    return jax.tree.map(copy, pool)


def _decode_chunk(state, pool, tok, pos, gen, done, max_new, stop, temp, top_k, top_p, min_p, seeds, tables,
                  shared=None, layers=None, *, graphdef, steps: int, routed: bool):
    TRACES[0] += 1
    model = nnx.merge(graphdef, state)
    shared = None if shared is None else SharedPrefix(*shared)
    base = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 0))(seeds)

    def body(carry, _):
        pool, tok, pos, gen, done = carry
        active = ~done
        out = model.forward(tok[:, None], None, pos[:, None], cache=pool, cache_slots=pos[:, None],
                            block_tables=tables, token_valid=active[:, None], shared_prefix=shared,
                            layers=layers)
        keys = jax.vmap(jax.random.fold_in)(base, gen)
        new, lp = sampling.sample(out.logits[:, 0], keys, temp, top_k, top_p, min_p)
        gen = gen + active
        hit = active & jnp.any(stop == new[:, None], axis=-1)
        ended = active & ~hit & (gen >= max_new)
        ys = (jnp.where(active, new, 0), lp, active, hit)
        if routed:
            ys += (out.router.expert_ids[:, 0],)
        return (out.cache, jnp.where(active, new, tok), pos + active, gen, done | hit | ended), ys

    (pool, *_), ys = jax.lax.scan(body, (pool, tok, pos, gen, done), None, length=steps)
    return pool, ys


prefill = jax.jit(_prefill, static_argnames=("graphdef", "routed"), donate_argnames=("pool",))
copy_blocks = jax.jit(_copy_blocks, donate_argnames=("pool",))
decode_chunk = jax.jit(_decode_chunk, static_argnames=("graphdef", "steps", "routed"), donate_argnames=("pool",))
