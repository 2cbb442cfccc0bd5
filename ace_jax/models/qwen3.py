"""Qwen3 / Qwen3-MoE causal LM in Flax NNX with stacked, scanned layers.

Each run of identical layers (dense-MLP or MoE) is one `LayerRun` whose parameters carry a
leading `layers` axis; the forward is one `lax.scan` per run. For inference, `layer_params()`
splits the stacks once into one array per layer and `forward(layers=...)` runs the layers as a
Python loop (unrolled) on a per-layer KV cache (`init_paged_cache(per_layer=True)`), so no step
slices a layer's weights or KV out of a stack (on CPU each slice is a copy). Parameters carry logical axis
names (metadata `logical_axes`) that sharding rules map onto mesh axes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ace_jax.models import paged
from ace_jax.models.config import Qwen3Config
from ace_jax.models.constraints import constrain, gather_weight
from ace_jax.models.layers import (apply_rope, attend, attend_shared, build_attention_mask, param, rms_norm,
                                   rope_tables, swiglu)
from ace_jax.models.moe import moe_block

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class KVCache(NamedTuple):
    """Per-run key/value caches: per run an array [layers, B, S, kv_heads, head_dim] (stacked) or a
    tuple of per-layer arrays [B, S, kv_heads, head_dim] (`per_layer=True`, for `forward(layers=...)`)."""

    keys: tuple[Any, ...]
    values: tuple[Any, ...]

    @property
    def per_layer(self) -> bool:
        return isinstance(self.keys[0], tuple)

    @property
    def slots(self) -> int:
        """Slots per row (contiguous) or per block (paged): the axis after batch / blocks."""
        first = self.keys[0]
        return first[0].shape[1] if isinstance(first, tuple) else first.shape[2]


LayerParams = tuple[tuple[dict[str, jax.Array], ...], ...]  # per run, per layer: name -> array


class RouterStats(NamedTuple):
    """MoE router outputs stacked over MoE layers (in layer order)."""

    expert_ids: jax.Array     # [B, T, moe_layers, k]
    expert_load: jax.Array    # [moe_layers, E] valid tokens routed per expert
    aux_loss: jax.Array       # [] Switch-style load-balancing loss, mean over MoE layers


class ModelOutput(NamedTuple):
    hidden: jax.Array                 # [B, T, H] after the final norm
    logits: jax.Array | None          # [B, T, V] fp32 when computed
    cache: KVCache | None
    router: RouterStats | None


def _dtype(name: str):
    return jnp.dtype(name)


class LayerRun(nnx.Module):
    """`count` identical decoder layers with stacked parameters."""

    def __init__(self, cfg: Qwen3Config, is_moe: bool, count: int, *, rngs: nnx.Rngs):
        self.is_moe = is_moe
        self.count = count
        n, h, d = count, cfg.hidden_size, cfg.head_dim
        dt = _dtype(cfg.param_dtype)
        heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.input_norm = param(rngs, (n, h), ("layers", "embed"), dt, "ones")
        self.post_norm = param(rngs, (n, h), ("layers", "embed"), dt, "ones")
        self.q_proj = param(rngs, (n, h, heads, d), ("layers", "embed", "heads", "head_dim"), dt)
        self.k_proj = param(rngs, (n, h, kv, d), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.v_proj = param(rngs, (n, h, kv, d), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.o_proj = param(rngs, (n, heads, d, h), ("layers", "heads", "head_dim", "embed"), dt)
        self.q_norm = param(rngs, (n, d), ("layers", "head_dim"), dt, "ones")
        self.k_norm = param(rngs, (n, d), ("layers", "head_dim"), dt, "ones")
        if is_moe:
            e, i = cfg.num_experts, cfg.moe_intermediate_size
            self.router = param(rngs, (n, h, e), ("layers", "embed", "experts"), dt)
            self.gate_proj = param(rngs, (n, e, h, i), ("layers", "experts", "embed", "mlp"), dt)
            self.up_proj = param(rngs, (n, e, h, i), ("layers", "experts", "embed", "mlp"), dt)
            self.down_proj = param(rngs, (n, e, i, h), ("layers", "experts", "mlp", "embed"), dt)
        else:
            i = cfg.intermediate_size
            self.gate_proj = param(rngs, (n, h, i), ("layers", "embed", "mlp"), dt)
            self.up_proj = param(rngs, (n, h, i), ("layers", "embed", "mlp"), dt)
            self.down_proj = param(rngs, (n, i, h), ("layers", "mlp", "embed"), dt)


def _layer(cfg: Qwen3Config, is_moe: bool, p: dict[str, jax.Array], x: jax.Array, ctx: dict[str, Any],
           cache_kv: tuple[jax.Array, jax.Array] | None, forced_ids: jax.Array | None,
           axes: dict[str, tuple[str, ...]]):
    """One decoder layer on x [B, T, H]; `p` holds this layer's slice of the stacked params, `axes`
    their logical axes (each weight is gathered for use in the compute dtype)."""
    cdt = x.dtype
    b, t, _ = x.shape
    router_dt = cdt if cfg.router_dtype == "compute" else None   # the gate matmul's dtype (moe.route)
    w = {k: gather_weight(v, axes[k], router_dt if k == "router" else cdt) for k, v in p.items()}
    h = rms_norm(x, w["input_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("bth,hnd->btnd", h, w["q_proj"])
    k = jnp.einsum("bth,hkd->btkd", h, w["k_proj"])
    v = jnp.einsum("bth,hkd->btkd", h, w["v_proj"])
    q = constrain(apply_rope(rms_norm(q, w["q_norm"], cfg.rms_norm_eps), ctx["cos"], ctx["sin"]),
                  ("batch", "seq", "heads", "head_dim"))
    k = constrain(apply_rope(rms_norm(k, w["k_norm"], cfg.rms_norm_eps), ctx["cos"], ctx["sin"]),
                  ("batch", "seq", "kv_heads", "head_dim"))
    v = constrain(v, ("batch", "seq", "kv_heads", "head_dim"))
    new_kv = None
    if cache_kv is not None and "read_tables" in ctx:  # paged: a block pool [blocks, block, K, D]
        pool_axes = (None, None, "kv_heads", "head_dim")
        k_pool = constrain(paged.write(cache_kv[0], ctx["write_index"], k), pool_axes)
        v_pool = constrain(paged.write(cache_kv[1], ctx["write_index"], v), pool_axes)
        new_kv = (k_pool, v_pool)
        k = paged.read_blocks(k_pool, ctx["read_tables"]).astype(cdt)
        v = paged.read_blocks(v_pool, ctx["read_tables"]).astype(cdt)
    elif cache_kv is not None:
        slots = ctx["cache_slots"]
        write = jax.vmap(lambda c, s, u: c.at[s].set(u.astype(c.dtype)))
        k_all, v_all = write(cache_kv[0], slots, k), write(cache_kv[1], slots, v)
        new_kv = (k_all, v_all)
        k, v = k_all.astype(cdt), v_all.astype(cdt)
    if "shared_tables" in ctx:  # the groups' prompt keys, read once per group
        k_shared, v_shared = (paged.read_blocks(pool, ctx["shared_tables"]).astype(cdt) for pool in new_kv)
        attn = attend_shared(q, k_shared, v_shared, ctx["shared_valid"], k, v, ctx["mask"], ctx["shared_prefix"])
    else:
        attn = attend(q, k, v, ctx["mask"])
    x = constrain(x + jnp.einsum("btnd,ndh->bth", attn, w["o_proj"]), ("batch", "seq", "embed"))
    h = rms_norm(x, w["post_norm"], cfg.rms_norm_eps)
    ids = stats = None
    if is_moe:
        flat = h.reshape(b * t, -1)
        y, ids, stats = moe_block(
            flat, w["router"], w["gate_proj"], w["up_proj"], w["down_proj"],
            top_k=cfg.num_experts_per_tok, norm_topk_prob=cfg.norm_topk_prob,
            backend=cfg.moe_backend, token_mask=ctx["token_mask"], router_dtype=cfg.router_dtype,
            forced_ids=None if forced_ids is None else forced_ids.reshape(b * t, -1))
        y = y.reshape(b, t, -1)
        ids = ids.reshape(b, t, -1)
    else:
        y = swiglu(h, w["gate_proj"], w["up_proj"], w["down_proj"])
    return constrain(x + y, ("batch", "seq", "embed")), new_kv, ids, stats


def _layer_axes(run: LayerRun) -> dict[str, tuple[str, ...]]:
    """Logical axes of one layer's params (the stacked ones without their "layers" axis)."""
    return {name: tuple(value.get_metadata()["logical_axes"][1:]) for name, value in vars(run).items()
            if isinstance(value, nnx.Param)}


def _run_forward(cfg: Qwen3Config, run: LayerRun, x, ctx, cache_kv, forced_ids):
    """Scan one run of layers. cache_kv: ([L,B,S,K,D], [L,B,S,K,D]) or None; forced_ids [L,B,T,k] or None."""
    params = _params_of(run)
    axes = _layer_axes(run)

    def body(carry, xs):
        p, kv, forced = xs
        out, new_kv, ids, stats = _layer(cfg, run.is_moe, p, carry, ctx, kv, forced, axes)
        return out, (new_kv, ids, stats)

    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
    x, (new_kv, ids, stats) = jax.lax.scan(body, x, (params, cache_kv, forced_ids))
    return x, new_kv, ids, stats


def _run_unrolled(cfg: Qwen3Config, run: LayerRun, params: tuple[dict[str, jax.Array], ...], x, ctx,
                  cache_kv, forced_ids):
    """`_run_forward` as a Python loop over the run's layers with per-layer `params` and
    cache_kv (per-layer tuples of keys and values, or None); same outputs, stacked over layers."""
    axes = _layer_axes(run)
    keys, values, ids, stats = [], [], [], []
    for layer, p in enumerate(params):
        kv = None if cache_kv is None else (cache_kv[0][layer], cache_kv[1][layer])
        forced = None if forced_ids is None else forced_ids[layer]
        x, new_kv, layer_ids, layer_stats = _layer(cfg, run.is_moe, p, x, ctx, kv, forced, axes)
        if new_kv is not None:
            keys.append(new_kv[0])
            values.append(new_kv[1])
        ids.append(layer_ids)
        stats.append(layer_stats)
    new_kv = (tuple(keys), tuple(values)) if cache_kv is not None else None
    if not run.is_moe:
        return x, new_kv, None, None
    return x, new_kv, jnp.stack(ids), jax.tree.map(lambda *a: jnp.stack(a), *stats)


def _params_of(run: LayerRun) -> dict[str, jax.Array]:
    return {name: value[...] for name, value in vars(run).items() if isinstance(value, nnx.Param)}


class Qwen3ForCausalLM(nnx.Module):
    """Qwen3 (dense) and Qwen3-MoE causal LM.

    `model(input_ids, attention_mask=None)` returns fp32 logits [B, T, V]; `model.forward(...)`
    returns hidden states, optional logits, the updated KV cache and router statistics.
    """

    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        self.config = cfg
        dt = _dtype(cfg.param_dtype)
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt)
        self.runs = nnx.List([LayerRun(cfg, moe, count, rngs=rngs) for moe, _, count in cfg.layer_runs()])
        self.final_norm = param(rngs, (cfg.hidden_size,), ("embed",), dt, "ones")
        if not cfg.tie_word_embeddings:
            self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt)

    def lm_head_weight(self) -> jax.Array:
        """LM head as [H, V] (the transposed embedding when tied)."""
        if self.config.tie_word_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def init_cache(self, batch: int, length: int, dtype: str | None = None) -> KVCache:
        """Zeroed KV cache with `length` slots per sequence."""
        return self._zero_kv((batch, length), dtype)

    def init_paged_cache(self, blocks: int, block_size: int, dtype: str | None = None,
                         per_layer: bool = False) -> KVCache:
        """Zeroed paged pool: per run [layers, blocks, block_size, kv_heads, head_dim] (block 0 is
        trash), or with `per_layer` one [blocks, block_size, kv_heads, head_dim] buffer per layer."""
        return self._zero_kv((blocks, block_size), dtype, per_layer)

    def layer_params(self) -> LayerParams:
        """The stacked layer params split into one array per layer (copies), for `forward(layers=...)`."""
        out = []
        for run in self.runs:
            params = _params_of(run)
            out.append(tuple({name: value[layer] for name, value in params.items()} for layer in range(run.count)))
        return tuple(out)

    def _zero_kv(self, middle: tuple[int, int], dtype: str | None, per_layer: bool = False) -> KVCache:
        cfg = self.config
        dt = _dtype(dtype or cfg.compute_dtype)
        one = (*middle, cfg.num_key_value_heads, cfg.head_dim)
        if per_layer:
            return KVCache(*(tuple(tuple(jnp.zeros(one, dt) for _ in range(run.count)) for run in self.runs)
                             for _ in range(2)))
        shapes = [(run.count, *one) for run in self.runs]
        return KVCache(tuple(jnp.zeros(s, dt) for s in shapes), tuple(jnp.zeros(s, dt) for s in shapes))

    def forward(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                positions: jax.Array | None = None, segment_ids: jax.Array | None = None, *,
                cache: KVCache | None = None, cache_slots: jax.Array | None = None,
                routed_experts: jax.Array | None = None, compute_logits: bool = True,
                block_tables: jax.Array | None = None, token_valid: jax.Array | None = None,
                shared_prefix: paged.SharedPrefix | None = None, layers: LayerParams | None = None) -> ModelOutput:
        """Full forward.

        Without a cache, `attention_mask` [B, T] marks valid tokens and causality is by index.
        With a cache of S slots, the T new tokens are written at `cache_slots` [B, T]
        (default: `positions`), `attention_mask` [B, S] marks the valid slots after the write,
        and a key slot is visible to a query when slot_k <= slot_q.
        `routed_experts` [B, T, moe_layers, k] forces the routing (routing replay).
        With `block_tables` [B, M] the cache is a paged pool (`init_paged_cache`): row b's logical
        slots are M * block_size, read and written through its table (see `models.paged`);
        `token_valid` [B, T] sends padding tokens' writes to the trash block, and keys are masked
        by causality alone (every slot at or before a query's was written by that row).
        `shared_prefix` (with `block_tables`): rows' prompt blocks shared by their group, read once
        per group; `block_tables` then hold the private blocks only (see `paged.SharedPrefix`).
        `layers` (from `layer_params()`, same values as the stacked params) runs the layers unrolled
        on those per-layer arrays; a cache must then be per-layer (`per_layer=True`).
        """
        cfg = self.config
        cdt = _dtype(cfg.compute_dtype)
        b, t = input_ids.shape
        if cache is not None and cache.per_layer != (layers is not None):
            raise ValueError("a per-layer KV cache goes with `layers` (unrolled), a stacked one without")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        if cache is None:
            index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            mask = build_attention_mask(index, index, attention_mask, segment_ids, segment_ids)
            token_mask = None if attention_mask is None else attention_mask.reshape(-1)
        else:
            slots = positions if cache_slots is None else cache_slots
            s = cache.slots
            if block_tables is not None:
                s = block_tables.shape[1] * cache.slots
            key_index = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
            if shared_prefix is not None:  # private keys start after the row's shared slots
                if block_tables is None:
                    raise ValueError("shared_prefix needs a paged cache (block_tables)")
                key_index = key_index + shared_prefix.offsets()[:, None]
            mask = build_attention_mask(slots, key_index, attention_mask)
            if shared_prefix is not None:
                slots = slots - shared_prefix.offsets()[:, None]  # written through the private tables
            token_mask = None
        ctx = dict(cos=cos, sin=sin, mask=mask, token_mask=token_mask,
                   cache_slots=None if cache is None else slots)
        if cache is not None and block_tables is not None:
            block = cache.slots
            ctx.update(write_index=paged.write_index(block_tables, slots, token_valid, block),
                       read_tables=block_tables)
            if shared_prefix is not None:
                ctx.update(shared_tables=shared_prefix.tables,
                           shared_valid=shared_prefix.valid(block), shared_prefix=shared_prefix)
        x = constrain(self.embed[...].astype(cdt)[input_ids], ("batch", "seq", "embed"))
        new_keys, new_values, all_ids, loads, auxes = [], [], [], [], []
        moe_seen = 0
        for r, run in enumerate(self.runs):
            kv = None if cache is None else (cache.keys[r], cache.values[r])
            forced = None
            if run.is_moe and routed_experts is not None:
                forced = jnp.moveaxis(routed_experts[:, :, moe_seen:moe_seen + run.count], 2, 0)
            if layers is None:
                x, new_kv, ids, stats = _run_forward(cfg, run, x, ctx, kv, forced)
            else:
                x, new_kv, ids, stats = _run_unrolled(cfg, run, layers[r], x, ctx, kv, forced)
            if new_kv is not None:
                new_keys.append(new_kv[0])
                new_values.append(new_kv[1])
            if run.is_moe:
                moe_seen += run.count
                all_ids.append(jnp.moveaxis(ids, 0, 2))
                loads.append(stats.expert_load)
                auxes.append(stats.aux_loss)
        hidden = rms_norm(x, gather_weight(self.final_norm[...], ("embed",), cdt), cfg.rms_norm_eps)
        logits = None
        if compute_logits:
            head = gather_weight(self.lm_head_weight(), ("embed", "vocab"), cdt)
            logits = jnp.einsum("bth,hv->btv", hidden, head,
                                preferred_element_type=jnp.float32)
            logits = constrain(logits, ("batch", "seq", "vocab"))
        router = None
        if all_ids:
            router = RouterStats(jnp.concatenate(all_ids, axis=2), jnp.concatenate(loads, axis=0),
                                 jnp.mean(jnp.concatenate(auxes)))
        new_cache = None if cache is None else KVCache(tuple(new_keys), tuple(new_values))
        return ModelOutput(hidden, logits, new_cache, router)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
        return self.forward(input_ids, attention_mask, positions, segment_ids).logits
