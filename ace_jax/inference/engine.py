"""The embedded JAX rollout engine.

Two schedulers. `continuous` (the default, `inference/scheduler.py`): a paged KV pool, a group's
prompt prefilled once and forked to its n samples, and continuous batching of decode chunks.
`static` (the engine before it, kept for bench/rollout.py and described below): batched prefill
+ KV-cache decode under one jit per bucket.

Prompts are left-padded to a prompt-length bucket so every row's last prompt token sits at the
same cache slot; RoPE positions restart at 0 for each row, so padding changes nothing. One
jitted function per (batch, prompt, generation) bucket runs the prefill and then a
`lax.while_loop` of single-token decode steps that stops as soon as every row has finished (a
stop token or its own max_new_tokens). On CPU the loop under jit beats a jitted step called per
token from Python (see bench/decode.py). Weights are an argument of the compiled function,
so swapping them (same shapes and dtypes) never recompiles.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from concurrent.futures import Future
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ace_jax.checkpoint import hf
from ace_jax.inference import sampling
from ace_jax.inference.buckets import Buckets
from ace_jax.inference.kv_blocks import blocks_for
from ace_jax.inference.moe_choice import fastest_backend
from ace_jax.inference.paged_steps import TRACES as _PAGED_TRACES
from ace_jax.inference.scheduler import ContinuousScheduler
from ace_jax.models import Qwen3ForCausalLM
from rollout.engine import Completion, EngineError, GenerateRequest

_NONE, _STOP, _LENGTH = 0, 1, 2


@dataclasses.dataclass
class _Row:
    """One sample to generate: request index, sample index and its prompt."""

    request: int
    sample: int
    ids: tuple[int, ...]
    seed: int


class JaxEngine:
    """Implements `rollout.engine.RolloutEngine` in-process with a Qwen3 model."""

    def __init__(self, model: Qwen3ForCausalLM, *, buckets: Buckets | None = None,
                 eos_token_ids: Sequence[int] | None = None, weight_version: str = "default",
                 seed: int = 0, max_stop_ids: int = 16, model_path: str | None = None,
                 moe_backend: str | None = None, decode_moe_backend: str | None = None,
                 scheduler: str = "continuous", kv_pool_tokens: int | None = None, block_size: int = 16,
                 decode_slots: int | None = None, decode_chunk: int = 8, shared_prefix: str = "auto",
                 unroll_layers: bool | None = None):
        """`moe_backend` (default: the model's) runs the prefill; `decode_moe_backend` the decode
        steps (default: `measure` on CPU, the fastest of a timed MoE block at this model's shapes
        and decode batch, see `moe_choice`; else the prefill's).

        `scheduler="continuous"` keeps a paged KV pool of `kv_pool_tokens` slots (default: the
        largest batch x (largest prompt + generation bucket)) in blocks of `block_size` (one of
        them the trash block), decodes up
        to `decode_slots` rows (default: the largest batch bucket) in chunks of `decode_chunk`
        steps, reading a group's shared prompt blocks once for all its rows (`shared_prefix`:
        `auto`, `always` or `never`, see `scheduler`); `scheduler="static"` is the bucketed
        whole-batch engine.

        `unroll_layers` (continuous only; default: on CPU) splits the stacked layer weights once
        per weight load into one array per layer and runs prefill and decode unrolled on a per-layer
        KV pool (`Qwen3ForCausalLM.layer_params`): no step copies a layer's weights out of the stack.
        The per-layer copies add one copy of the layer weights to the engine's memory."""
        if scheduler not in ("continuous", "static"):
            raise ValueError(f"scheduler must be 'continuous' or 'static', got {scheduler!r}")
        self.config = model.config
        self.buckets = buckets or Buckets.powers_of_two(max_prompt=min(2048, self.config.max_position_embeddings))
        if moe_backend:
            self.config = self.config.replace(moe_backend=moe_backend)
        if decode_moe_backend is None:
            decode_moe_backend = "measure" if jax.default_backend() == "cpu" else self.config.moe_backend
        if decode_moe_backend == "measure":  # the fastest at this model's shapes, a decode batch
            decode_moe_backend = "dense"
            if self.config.is_moe:
                decode_moe_backend = fastest_backend(self.config, decode_slots or self.buckets.max_batch)[0]
        self.decode_moe_backend = decode_moe_backend
        # The graph of an abstract model depends only on the config, so engines with the same
        # architecture share compiled functions (the params are an argument, never a constant).
        self.graphdef = _graph(self.config)
        self.decode_graphdef = _graph(self.config.replace(moe_backend=decode_moe_backend))
        self.state = nnx.split(model)[1]
        self._paths, self._treedef = _flatten(self.state)
        if unroll_layers is None:
            unroll_layers = jax.default_backend() == "cpu"
        self.unroll_layers = bool(unroll_layers) and scheduler == "continuous"
        self.layers = None
        self._split_layers()
        eos = self.config.eos_token_id if eos_token_ids is None else eos_token_ids
        self.eos_token_ids = tuple(sorted({int(e) for e in ([eos] if isinstance(eos, int) else eos or ())}))
        self.weight_version = weight_version
        self.model_path = model_path or hf.source_dir(model)
        self.max_stop_ids = max_stop_ids
        self._updates = 0
        self._seeds = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self._host_state = None  # weights offloaded by release_memory_occupation
        self.scheduler = None
        self._static_kv_peak = 0
        self._static_shapes: set[tuple] = set()
        if scheduler == "continuous":
            tokens = kv_pool_tokens or self.buckets.max_batch * (self.buckets.prompt[-1] + self.buckets.generate[-1])
            self.scheduler = ContinuousScheduler(self, slots=decode_slots or self.buckets.max_batch,
                                                 block_size=block_size, pool_blocks=max(2, blocks_for(tokens, block_size)),
                                                 chunk_steps=decode_chunk, shared_prefix=shared_prefix)

    @property
    def returns_routed_experts(self) -> bool:
        """Whether `return_routed_experts` requests get the experts (MoE models only)."""
        return self.config.is_moe

    @property
    def compile_count(self) -> int:
        """Generate functions traced so far in this process (shared by same-architecture engines)."""
        return _TRACES[0] + _PAGED_TRACES[0]

    @property
    def compiled_shapes(self) -> list[tuple]:
        """The (kind, shape...) keys this engine's calls compiled for (bounded by the buckets)."""
        return sorted(self.scheduler.shapes if self.scheduler else self._static_shapes, key=str)

    def kv_bytes(self) -> dict[str, int]:
        """KV cache memory: `reserved` (the paged pool, or the largest static batch cache) and
        `peak` (bytes held by live rows at the high-water mark; the static cache is all live)."""
        if self.scheduler is not None:
            return {"reserved": self.scheduler.pool_bytes, "peak": self.scheduler.peak_bytes}
        return {"reserved": self._static_kv_peak, "peak": self._static_kv_peak}

    @classmethod
    def from_hf(cls, path: str, dtype: str = "float32", **kwargs: Any) -> "JaxEngine":
        """Load a HF directory; stop tokens from config.json and generation_config.json."""
        from ace_jax.checkpoint import hf
        model = hf.load(path, dtype=dtype)
        kwargs.setdefault("eos_token_ids", eos_ids_of(path))
        return cls(model, model_path=path, **kwargs)

    # ------------------------------------------------------------------------- protocol
    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """For each request its `n` completions; rows beyond the largest batch run in chunks."""
        if self.scheduler is not None:
            return self.generate_async(requests).result()
        rows = self._rows(requests)
        out: list[list[Completion | None]] = [[None] * r.n for r in requests]
        with self._lock:
            if self.state is None:
                raise EngineError("the engine's weights are released; call resume_memory_occupation first")
            version = self.weight_version
            order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
            step = self.buckets.max_batch
            for start in range(0, len(order), step):
                chunk = [rows[i] for i in order[start:start + step]]
                for row, comp in zip(chunk, self._run_chunk(chunk, requests)):
                    comp.weight_version = version
                    out[row.request][row.sample] = comp
        return out  # type: ignore[return-value]

    def generate_async(self, requests: Sequence[GenerateRequest]) -> Future:
        """Queue requests on the continuous scheduler (bad requests raise here); the future gives
        what `generate` returns. Concurrent callers share the running decode batch."""
        if self.scheduler is None:
            raise EngineError("generate_async needs scheduler='continuous'")
        rows = self._rows(requests)
        if self.state is None:
            raise EngineError("the engine's weights are released; call resume_memory_occupation first")
        seeds = [[r.seed for r in rows if r.request == i] for i in range(len(requests))]
        return self.scheduler.submit(requests, seeds)

    def update_weights_from_disk(self, path: str, weight_version: str | None = None) -> str:
        """Load a HF directory with this engine's architecture and swap the weights in place."""
        from ace_jax.checkpoint import hf
        from ace_jax.models import Qwen3Config
        new_cfg = Qwen3Config.from_hf(path)
        arch = [f.name for f in dataclasses.fields(new_cfg)
                if f.name not in ("param_dtype", "compute_dtype", "moe_backend", "remat")]
        diff = [k for k in arch if getattr(new_cfg, k) != getattr(self.config, k)]
        if diff:
            raise EngineError(f"{path}: config.json differs from the served model in {diff}")
        model = hf.load(path, dtype=self.config.param_dtype)
        version = self.update_weights(model, weight_version)
        self.model_path = path
        return version

    def update_weights(self, params: nnx.State | nnx.Module, weight_version: str | None = None) -> str:
        """Swap in a param tree (or a model) with the same parameter paths and shapes.

        Values are cast to the served dtypes, so the compiled functions are reused. Waits for a
        running `generate`. Returns the new weight version (given, or the update count)."""
        if isinstance(params, nnx.Module):
            params = nnx.split(params)[1]
        paths, _ = _flatten(params)
        new = dict(zip(paths, jax.tree.leaves(params)))
        old = dict(zip(self._paths, jax.tree.leaves(self._host_state if self.state is None else self.state)))
        missing = sorted(set(old) - set(new))
        extra = sorted(set(new) - set(old))
        shapes = [f"{p}: {tuple(new[p].shape)} vs served {tuple(old[p].shape)}"
                  for p in sorted(set(old) & set(new)) if tuple(new[p].shape) != tuple(old[p].shape)]
        if missing or extra or shapes:
            raise EngineError(f"new weights do not match the served model: missing {missing}, "
                              f"unexpected {extra}, mis-shaped {shapes}")
        leaves = [jnp.asarray(new[p], dtype=old[p].dtype) for p in self._paths]
        with self._lock:
            state = jax.tree.unflatten(self._treedef, leaves)
            if self.state is None:
                self._host_state = jax.device_get(state)
            else:
                self.state = state
                self._split_layers()
            self._updates += 1
            self.weight_version = str(weight_version) if weight_version is not None else str(self._updates)
            return self.weight_version

    def health(self) -> bool:
        return self.state is not None

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        with self._lock:
            self.state = None
            self.layers = None
            self._host_state = None

    # ------------------------------------------------------------------------- memory
    def release_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        """Move the weights to host memory (tag 'weights'); free the paged KV pool (tag 'kv_cache',
        allocated again on the next call; the static engine's cache lives only inside a call)."""
        tags = list(tags or ("weights", "kv_cache"))
        bad = sorted(set(tags) - {"weights", "kv_cache"})
        if bad:
            raise ValueError(f"unknown memory tags {bad}; allowed: ['kv_cache', 'weights']")
        with self._lock:
            if "weights" in tags and self.state is not None:
                self._host_state = jax.device_get(self.state)
                self.state = None
                self.layers = None
            if "kv_cache" in tags and self.scheduler is not None:
                self.scheduler.drop_pool()

    def resume_memory_occupation(self, tags: Sequence[str] | None = None) -> None:
        tags = list(tags or ("weights", "kv_cache"))
        with self._lock:
            if "weights" in tags and self.state is None and self._host_state is not None:
                self.state = jax.tree.map(jnp.asarray, self._host_state)
                self._host_state = None
                self._split_layers()

    # ------------------------------------------------------------------------- internals
    def _split_layers(self) -> None:
        """Per-layer weights for the unrolled paged steps, split once from the served state."""
        self.layers = None
        if self.unroll_layers and self.state is not None:
            self.layers = nnx.merge(self.graphdef, self.state).layer_params()

    def _rows(self, requests: Sequence[GenerateRequest]) -> list[_Row]:
        cfg = self.config
        rows = []
        for i, req in enumerate(requests):
            sp = req.sampling
            bad = [t for t in req.input_ids if not 0 <= t < cfg.vocab_size]
            if bad:
                raise ValueError(f"request {i}: token ids {bad[:5]} outside the vocabulary (size {cfg.vocab_size})")
            if req.return_routed_experts and not cfg.is_moe:
                raise ValueError(f"request {i}: return_routed_experts needs a MoE model")
            if len(req.input_ids) + sp.max_new_tokens > cfg.max_position_embeddings:
                raise ValueError(f"request {i}: prompt ({len(req.input_ids)}) + max_new_tokens "
                                 f"({sp.max_new_tokens}) exceeds max_position_embeddings {cfg.max_position_embeddings}")
            self.buckets.shape_for(1, len(req.input_ids), sp.max_new_tokens)  # raises when too long
            if len(set(sp.stop_token_ids) | set(self.eos_token_ids)) > self.max_stop_ids:
                raise ValueError(f"request {i}: more than {self.max_stop_ids} stop token ids")
            seed = int(sp.seed) if sp.seed is not None else int(self._seeds.integers(0, 2**32))
            # Sample j of a request seeded s draws from seed s + j (as SGLang's sampling_seed per
            # sample): n samples equal n single requests seeded s, s + 1, ...
            rows += [_Row(i, j, req.input_ids, (seed + j) % 2**32) for j in range(req.n)]
        return rows

    def _run_chunk(self, chunk: list[_Row], requests: Sequence[GenerateRequest]) -> list[Completion]:
        reqs = [requests[r.request] for r in chunk]
        b, p, g = self.buckets.shape_for(len(chunk), max(len(r.ids) for r in chunk),
                                          max(q.sampling.max_new_tokens for q in reqs))
        routed = any(q.return_routed_experts for q in reqs)
        self._static_shapes.add(("generate", b, p, g, routed))
        cfg = self.config
        self._static_kv_peak = max(self._static_kv_peak, 2 * cfg.num_hidden_layers * b * (p + g) * cfg.num_key_value_heads
                                   * cfg.head_dim * jnp.dtype(cfg.compute_dtype).itemsize)
        ids = np.zeros((b, p), np.int32)
        pad = np.full(b, p - 1, np.int32)
        max_new = np.ones(b, np.int32)
        stop = np.full((b, self.max_stop_ids), -1, np.int32)
        temp, top_p, min_p = np.zeros(b, np.float32), np.ones(b, np.float32), np.zeros(b, np.float32)
        top_k = np.full(b, -1, np.int32)
        seeds, sample = np.zeros(b, np.uint32), np.zeros(b, np.int32)
        for i, (row, req) in enumerate(zip(chunk, reqs)):
            sp = req.sampling
            n = len(row.ids)
            ids[i, p - n:] = row.ids
            pad[i] = p - n
            max_new[i] = sp.max_new_tokens
            stops = sampling.stop_ids(sp, self.eos_token_ids)
            stop[i, :len(stops)] = stops
            temp[i], top_p[i], top_k[i], min_p[i] = sp.temperature, sp.top_p, sp.top_k, sp.min_p
            seeds[i] = row.seed
        out = _generate_jit(self.state, ids, pad, max_new, stop, temp, top_k, top_p, min_p, seeds, sample,
                            graphdef=self.graphdef, decode_graphdef=self.decode_graphdef, gen_len=g, routed=routed)
        tokens, logprobs, lengths, finish = (np.asarray(x) for x in out[:4])
        comps = []
        for i, (row, req) in enumerate(zip(chunk, reqs)):
            n_out = int(lengths[i])
            toks = tokens[i, :n_out].tolist()
            reason = {_STOP: "stop", _LENGTH: "length"}[int(finish[i])]
            experts = None
            if req.return_routed_experts:
                prefill_ids, decode_ids = np.asarray(out[4]), np.asarray(out[5])
                experts = np.concatenate([prefill_ids[i, pad[i]:], decode_ids[i, :n_out - 1]]).astype(np.int32)
            comps.append(Completion(
                token_ids=toks, logprobs=logprobs[i, :n_out].astype(float).tolist() if req.return_logprob else None,
                finish_reason=reason, prompt_tokens=len(row.ids), routed_experts=experts,
                matched_stop=toks[-1] if reason == "stop" else None))
        return comps


def _generate(state, ids, pad, max_new, stop, temp, top_k, top_p, min_p, seeds, sample_idx, *,
              graphdef, decode_graphdef, gen_len: int, routed: bool):
    """Prefill [B, P] left-padded prompts, then decode up to `gen_len` tokens per row."""
    _TRACES[0] += 1  # runs only while tracing
    model = nnx.merge(graphdef, state)
    decoder = nnx.merge(decode_graphdef, state)
    cfg = model.config
    b, p = ids.shape
    s = p + gen_len
    valid = jnp.arange(s)[None, :] >= pad[:, None]
    plen = p - pad
    positions = jnp.maximum(jnp.arange(p)[None, :] - pad[:, None], 0)
    slots = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    pre = model.forward(ids, valid, positions, cache=model.init_cache(b, s), cache_slots=slots,
                        compute_logits=False)
    head = model.lm_head_weight().astype(pre.hidden.dtype)
    logits = jnp.einsum("bh,hv->bv", pre.hidden[:, -1], head, preferred_element_type=jnp.float32)
    keys = jax.vmap(lambda seed, j: jax.random.fold_in(jax.random.key(seed), j))(seeds, sample_idx)

    def pick(logits, step):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        return sampling.sample(logits, step_keys, temp, top_k, top_p, min_p)

    def is_stop(tok):
        return jnp.any(stop == tok[:, None], axis=-1)

    tok, lp = pick(logits, 0)
    hit = is_stop(tok)
    ended = ~hit & (max_new <= 1)
    carry = dict(
        step=jnp.int32(1), cache=pre.cache,
        tokens=jnp.zeros((b, gen_len), jnp.int32).at[:, 0].set(tok),
        logprobs=jnp.zeros((b, gen_len), jnp.float32).at[:, 0].set(lp),
        lengths=jnp.ones(b, jnp.int32), done=hit | ended,
        finish=jnp.where(hit, _STOP, jnp.where(ended, _LENGTH, _NONE)).astype(jnp.int32))
    if routed:
        carry["experts"] = jnp.zeros((b, gen_len, cfg.num_moe_layers, cfg.num_experts_per_tok), jnp.int32)

    def cond(c):
        return (c["step"] < gen_len) & ~jnp.all(c["done"])

    def body(c):
        i = c["step"]
        feed = jax.lax.dynamic_index_in_dim(c["tokens"], i - 1, axis=1)  # [B, 1]
        slot = jnp.full((b, 1), p - 1, jnp.int32) + i
        out = decoder.forward(feed, valid, (plen - 1 + i)[:, None], cache=c["cache"], cache_slots=slot)
        tok, lp = pick(out.logits[:, 0], i)
        active = ~c["done"]
        lengths = c["lengths"] + active
        hit = active & is_stop(tok)
        ended = active & ~hit & (lengths >= max_new)
        new = dict(
            step=i + 1, cache=out.cache,
            tokens=c["tokens"].at[:, i].set(jnp.where(active, tok, 0)),
            logprobs=c["logprobs"].at[:, i].set(jnp.where(active, lp, 0.0)),
            lengths=lengths, done=c["done"] | hit | ended,
            finish=jnp.where(hit, _STOP, jnp.where(ended, _LENGTH, c["finish"])))
        if routed:
            new["experts"] = c["experts"].at[:, i - 1].set(out.router.expert_ids[:, 0])
        return new

    c = jax.lax.while_loop(cond, body, carry)
    outs = (c["tokens"], c["logprobs"], c["lengths"], c["finish"])
    if routed:
        outs += (pre.router.expert_ids, c["experts"])
    return outs


_TRACES = [0]
_generate_jit = jax.jit(_generate, static_argnames=("graphdef", "decode_graphdef", "gen_len", "routed"))


def _graph(cfg):
    return nnx.split(nnx.eval_shape(lambda: Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(0))))[0]


def _flatten(state) -> tuple[list[str], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    return [jax.tree_util.keystr(path) for path, _ in leaves], treedef


def eos_ids_of(path: str) -> list[int]:
    """Stop token ids of a HF directory: config.json's and generation_config.json's eos_token_id."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as f:
                value = json.load(f).get("eos_token_id")
            ids.update([value] if isinstance(value, int) else (value or []))
    return sorted(ids)
