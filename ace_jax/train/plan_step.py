"""The default update step `ace-jax plan` compiles (until the GRPO step is wired in):
forward + backward of the token cross-entropy (logprobs chunked over each sequence) + AdamW.

`build(cfg, mesh, rules, ...)` returns a `sharding.planner.StepSpec`: the step function, the
abstract sharded train state {"params", "opt"} and batch, and per-device analytic estimates.
Another step plugs in by providing a builder with the same signature (see ace_jax/commands/plan.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ace_jax.grpo.logprobs import chunked_logprobs
from ace_jax.models import Qwen3Config, Qwen3ForCausalLM
from ace_jax.models.constraints import use as use_hooks
from ace_jax.train.optimizer import scale_by_adam_moments
from ace_jax.train.step import compute_head
from sharding import init as sharded
from sharding.context import model_hooks
from sharding.expert_parallel import expert_axes
from sharding.minimum import ExpertExchange, minimum_traffic
from sharding.planner import StepSpec, shard_bytes
from sharding.rules import batch_sharding

MOMENT_DTYPES = ("float32", "bfloat16")


def adamw(learning_rate: float = 1e-6, weight_decay: float = 0.0, moments_dtype: str = "float32",
          b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """AdamW with the moments in `moments_dtype` ('float32' = optax.adamw)."""
    if moments_dtype not in MOMENT_DTYPES:
        raise ValueError(f"moments_dtype {moments_dtype!r}; allowed: {list(MOMENT_DTYPES)}")
    return optax.chain(scale_by_adam_moments(moments_dtype, b1=b1, b2=b2, eps=eps),
                       optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))


def token_logprobs(hidden: jax.Array, lm_head: jax.Array, targets: jax.Array, chunk: int) -> jax.Array:
    """log p(targets) [B, T], chunked along each sequence so the batch axis stays sharded."""
    one = lambda h, y: chunked_logprobs(h[None], lm_head, y[None], chunk_size=chunk)[0]  # noqa: E731
    return jax.vmap(one)(hidden, targets)


def make_step(graphdef, tx, hooks=None, chunk: int = 1024):
    """(state, batch) -> (state, metrics); state = {"params", "opt"}, batch = input_ids, targets,
    attention_mask, loss_mask ([B, T] each)."""

    def loss_fn(params, batch):
        model = nnx.merge(graphdef, params)
        out = model.forward(batch["input_ids"], batch["attention_mask"], compute_logits=False)
        lp = token_logprobs(out.hidden, compute_head(model, out.hidden.dtype), batch["targets"], chunk)
        mask = batch["loss_mask"].astype(jnp.float32)
        return -jnp.sum(lp * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    def step(state, batch):
        with use_hooks(hooks):
            loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
            updates, opt = tx.update(grads, state["opt"], state["params"])
            params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt": opt}, {"loss": loss}

    return step


def abstract_batch(mesh, rules, batch: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (batch, seq_len)
    sharding = batch_sharding(mesh, rules, shape)
    dt = {"input_ids": jnp.int32, "targets": jnp.int32, "attention_mask": jnp.int32, "loss_mask": jnp.float32}
    return {k: jax.ShapeDtypeStruct(shape, v, sharding=sharding) for k, v in dt.items()}


def activation_estimate(cfg: Qwen3Config, local_batch: int, seq_len: int, chunk: int = 1024) -> int:
    """Rough per-device activation bytes for `local_batch` sequences on the device: residual
    stream saved per layer (remat) or every layer's intermediates (no remat), one layer's
    attention scores and MoE buffers, one logits chunk (with its gradient)."""
    b = local_batch
    tok = b * seq_len
    cbytes = jnp.dtype(cfg.compute_dtype).itemsize
    h = cfg.hidden_size
    layers = cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    kv_dim = 2 * cfg.num_key_value_heads * cfg.head_dim
    scores = b * heads * seq_len * seq_len * 4 * 2                # fp32 scores + probs
    if cfg.is_moe:
        ffn = tok * cfg.num_experts_per_tok * (h + 3 * cfg.moe_intermediate_size) * cbytes
    else:
        ffn = tok * 3 * cfg.intermediate_size * cbytes
    per_layer = tok * (4 * h + heads * cfg.head_dim * 2 + kv_dim) * cbytes + ffn
    saved = tok * h * cbytes * layers if cfg.remat != "none" else per_layer * layers
    logits = b * min(chunk, seq_len) * cfg.vocab_size * 4 * 3
    return int(saved + per_layer + scores + logits)


def matmul_params_per_token(cfg: Qwen3Config) -> dict[str, int]:
    """Weights each token multiplies by in one forward pass: attention, MLP / routed experts, LM head."""
    h, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    attn = cfg.num_hidden_layers * (2 * h * q + 2 * h * kv)
    moe = cfg.num_moe_layers if cfg.is_moe else 0
    experts = moe * (cfg.num_experts_per_tok * 3 * h * cfg.moe_intermediate_size + h * cfg.num_experts) if moe else 0
    dense = (cfg.num_hidden_layers - moe) * 3 * h * cfg.intermediate_size
    return {"attention": attn, "experts": experts, "mlp": dense, "lm_head": h * cfg.vocab_size}


def analytic_flops(cfg: Qwen3Config, tokens: int, seq_len: int) -> dict[str, float]:
    """FLOPs of one update step over `tokens` tokens (sequences of `seq_len`):
    `hardware`: what the step executes (layers: forward, backward x2, plus a recompute with remat;
    LM head: forward, recompute, backward x2; attention scores counted in full, as computed);
    `model`: the MFU convention (6 x params per token + 12 x layers x d_attn x seq, no recompute)."""
    p = matmul_params_per_token(cfg)
    layers = p["attention"] + p["experts"] + p["mlp"]
    attn_fwd = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len   # QK^T and PV
    passes = 3 + (cfg.remat != "none")
    hardware = tokens * ((2 * layers + attn_fwd) * passes + 2 * p["lm_head"] * 4)
    model = tokens * (6 * (layers + p["lm_head"]) + 3 * attn_fwd)
    return {"hardware": float(hardware), "model": float(model), "experts": float(tokens * 2 * p["experts"] * passes)}


def step_costs(cfg: Qwen3Config, params, mesh, rules, *, local_batch: int, seq_len: int,
               expert_parallel: str) -> dict:
    """Per-device analytic FLOPs, minimum collective traffic and the local MoE layer shape (plan info)."""
    tokens = local_batch * seq_len
    ep_axes = tuple(expert_axes(mesh, rules, cfg.num_experts)) if cfg.is_moe and expert_parallel != "none" else ()
    ep = math.prod(mesh.shape[a] for a in ep_axes)
    cbytes = jnp.dtype(cfg.compute_dtype).itemsize
    exchange = ExpertExchange(cfg.num_moe_layers, tokens, cfg.hidden_size, cbytes, ep) if ep_axes else None
    minimum = minimum_traffic(params, mesh, compute_bytes=cbytes, ep_axes=ep_axes,
                              num_experts=cfg.num_experts if cfg.is_moe else None,
                              forward_passes=1 + (cfg.remat != "none"), exchange=exchange, tokens=tokens,
                              lookup_tables=() if cfg.tie_word_embeddings else ("embed",))
    out = {"tokens_per_device": tokens, "flops_analytic": analytic_flops(cfg, tokens, seq_len),
           "traffic_minimum": minimum, "ep": ep}
    if cfg.is_moe:   # one device's share of an MoE layer (balanced routing): rows = routed pairs
        out["moe_layer"] = {"rows": tokens * cfg.num_experts_per_tok, "hidden": cfg.hidden_size,
                            "width": cfg.moe_intermediate_size, "local_experts": cfg.num_experts // max(ep, 1),
                            "layers": cfg.num_moe_layers, "dtype": cfg.compute_dtype}
    return out


def moe_layer_flops(layer: dict, backends: list[str], device) -> dict[str, dict[str, float]]:
    """Compiled vs analytic FLOPs of one device's MoE expert computation, forward + backward, at
    the plan's local shape (`step_costs`' `moe_layer`: rows routed to the local experts), per
    grouped-matmul backend (`ragged` or `gmm`), compiled for `device` alone."""
    import types

    import numpy as np
    from jax.sharding import Mesh, SingleDeviceSharding

    from ace_jax.models import moe

    rows, h, f, e = layer["rows"], layer["hidden"], layer["width"], layer["local_experts"]
    dt = jnp.dtype(layer["dtype"])
    on = SingleDeviceSharding(device)
    sds = lambda shape, d=dt: jax.ShapeDtypeStruct(shape, d, sharding=on)  # noqa: E731
    analytic = 3 * 3 * 2.0 * rows * h * f       # 3 matmuls x (forward, input grad, weight grad)
    out = {}
    for backend in backends:
        matmul = moe.ragged_dot if backend == "ragged" else moe.target_gmm

        def loss(x, gate, up, down, ids, cot, matmul=matmul):
            mm = matmul() if matmul is moe.target_gmm else matmul
            y = moe.grouped_ffn(x, jnp.ones(ids.shape, x.dtype), ids, gate, up, down, mm)
            return jnp.sum((y * cot).astype(jnp.float32))

        with use_hooks(types.SimpleNamespace(mesh=Mesh(np.array([device]), ("device",)))):
            compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(
                sds((rows, h)), sds((e, h, f)), sds((e, h, f)), sds((e, f, h)), sds((rows, 1), jnp.int32),
                sds((rows, h))).compile()
        cost = compiled.cost_analysis()
        cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
        out[backend] = {"compiled": float(cost.get("flops", 0.0)), "analytic": analytic}
    return out


def build(cfg: Qwen3Config, mesh, rules, *, batch: int, seq_len: int, moments_dtype: str = "float32",
          expert_parallel: str = "none", ep_local: str | None = None, learning_rate: float = 1e-6,
          seed: int = 0) -> StepSpec:
    """StepSpec of forward + backward + AdamW for `cfg` on `mesh` (nothing is allocated)."""
    init_fn = lambda: nnx.split(Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(seed)))[1]  # noqa: E731
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(seed))))
    params = sharded.abstract_state(init_fn, mesh, rules)
    tx = adamw(learning_rate, moments_dtype=moments_dtype)
    opt = sharded.abstract_optimizer_state(tx, params, mesh)
    hooks = model_hooks(mesh, rules, expert_parallel, local_impl=ep_local)
    state = {"params": params, "opt": opt}
    data = abstract_batch(mesh, rules, batch, seq_len)
    local_batch = data["input_ids"].sharding.shard_shape((batch, seq_len))[0]
    param_bytes = shard_bytes(params)
    analytic = {
        "params": param_bytes,
        "optimizer": shard_bytes(opt),
        "gradients": param_bytes,
        "activations": activation_estimate(cfg, local_batch, seq_len),
    }
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return StepSpec(fn=make_step(graphdef, tx, hooks), state=state, batch=data,
                    parts={"params": lambda s: s["params"], "optimizer": lambda s: s["opt"]},
                    analytic=analytic,
                    info={"step": "forward+backward+AdamW (token cross-entropy)", "params": n_params,
                          "batch": batch, "seq_len": seq_len, "moments_dtype": moments_dtype,
                          "param_dtype": cfg.param_dtype, "compute_dtype": cfg.compute_dtype,
                          "remat": cfg.remat, "moe_backend": cfg.moe_backend,
                          "expert_parallel": expert_parallel + (f" ({ep_local} local)" if ep_local else ""),
                          **step_costs(cfg, params, mesh, rules, local_batch=local_batch, seq_len=seq_len,
                                       expert_parallel=expert_parallel)})


def build_grpo(cfg: Qwen3Config, mesh, rules, *, batch: int, seq_len: int, moments_dtype: str = "float32",
               expert_parallel: str = "none", ep_local: str | None = None, micro_batches: int = 1,
               seed: int = 0) -> StepSpec:
    """StepSpec of the GRPO train step (ace_jax.train.step.make_train_step) with its optimizer
    (ace_jax.train.optimizer.make_optimizer) and TrainState, sharded by the rules."""
    from jax.sharding import NamedSharding, PartitionSpec

    from ace_jax.grpo import LossConfig
    from ace_jax.train.batch import TrainBatch
    from ace_jax.train.optimizer import OptimizerConfig, make_optimizer
    from ace_jax.train.state import abstract_train_state
    from ace_jax.train.step import make_train_step

    tx = make_optimizer(OptimizerConfig(moments_dtype=moments_dtype))
    graphdef, state = abstract_train_state(lambda: Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(seed)), tx, seed=seed)
    params = sharded.with_shardings(state.params, sharded.state_shardings(state.params, mesh, rules))
    opt = sharded.abstract_optimizer_state(tx, params, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    scalar = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated)  # noqa: E731
    state = state._replace(params=params, opt_state=opt, step=scalar(state.step), rng=scalar(state.rng),
                           skipped=scalar(state.skipped))
    tokens = batch_sharding(mesh, rules, (batch, seq_len))
    rows = batch_sharding(mesh, rules, (batch,), axes=("batch",))
    sds = lambda dt, sh, shape=(batch, seq_len): jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
    data = TrainBatch(sds(jnp.int32, tokens), sds(jnp.int32, tokens), sds(jnp.int32, tokens),
                      sds(jnp.float32, rows, (batch,)), sds(jnp.float32, tokens))
    hooks = model_hooks(mesh, rules, expert_parallel, local_impl=ep_local)
    inner = make_train_step(graphdef, tx, LossConfig(), micro_batches=micro_batches, donate=False)

    def step(s, b):
        with use_hooks(hooks):
            return inner(s, b)

    local_batch = tokens.shard_shape((batch, seq_len))[0]
    param_bytes = shard_bytes(params)
    analytic = {"params": param_bytes, "optimizer": shard_bytes(opt), "gradients": param_bytes,
                "activations": activation_estimate(cfg, max(local_batch // micro_batches, 1), seq_len)}
    return StepSpec(fn=step, state=state, batch=data,
                    parts={"params": lambda s: s.params, "optimizer": lambda s: s.opt_state},
                    analytic=analytic,
                    info={"step": f"GRPO train step ({micro_batches} micro-batch)",
                          "params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
                          "batch": batch, "seq_len": seq_len, "moments_dtype": moments_dtype,
                          "param_dtype": cfg.param_dtype, "compute_dtype": cfg.compute_dtype,
                          "remat": cfg.remat, "moe_backend": cfg.moe_backend,
                          "expert_parallel": expert_parallel + (f" ({ep_local} local)" if ep_local else ""),
                          **step_costs(cfg, params, mesh, rules, local_batch=local_batch, seq_len=seq_len,
                                       expert_parallel=expert_parallel)})
