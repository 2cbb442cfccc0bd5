"""GRPO policy losses (PPO-clip with clip-higher, GSPO), KL to a reference, truncated IS.

Inputs are shaped ``[batch, tokens]`` (``advantages``: ``[batch]``, one per sequence,
broadcast over its tokens); ``mask`` is binary (bool or 0/1) and marks the completion tokens
that enter the loss. Values at masked positions are ignored (they may be garbage or -inf).

Per valid token::

    pg_t   = max(-A * r_t, -A * clip(r_t, 1 - eps_low, 1 + eps_high))
    loss_t = w_t * pg_t + kl_coef * kl_t

* ``ppo``:  r_t = exp(logp_t - old_t).
* ``gspo``: the sequence ratio s = exp(mean over the sequence's valid tokens of
  (logp - old)), in GSPO's per-token form r_t = sg(s) * exp(logp_t - sg(logp_t)): every
  token's value is s and d r_t / d logp_t = s. Under ``seq-mean-token-mean`` this equals the
  GSPO paper's sequence-level objective in value and gradient; the token form also makes
  the other aggregation modes well defined. Its clip range is ``gspo_eps_low/high``.
* ``w_t`` (truncated importance sampling against the rollout engine, on when
  ``config.use_tis`` and ``rollout_logprobs`` is given) = sg(min(exp(old_t - rollout_t),
  tis_cap)); it weights the policy-gradient term only, not the KL term (as verl does). With
  the trainer's ``old_logprobs="behaviour"`` old is the engine's logprobs, so w = 1 and the
  clipped ratio is the whole off-policy correction; with ``"proximal"`` old is the current
  policy and w = min(pi_prox / pi_behav, cap), AReaL's decoupled PPO.
* ``kl_t`` (``kl_coef > 0``; needs ``ref_logprobs``), with d = ref_t - logp_t:
  k1 = -d, k2 = d^2 / 2, k3 = exp(d) - 1 - d (d clamped to <= 20 to stay finite).

The (sum, count) contract
-------------------------
``policy_loss_terms`` returns ``{name: (sum, count)}`` with scalar ``sum`` (float) and
``count`` (int32). Every entry is additive over any split of the batch axis (micro-batches,
data-parallel shards): the terms of the full batch are the element-wise sums of the parts'
terms, and ``finalize_terms`` divides at the end (0 where count is 0). So the loss of the
whole batch is ``sum_k terms_k["loss"][0] / sum_k terms_k["loss"][1]`` exactly, for every
aggregation mode:

* ``token-mean``: sum of loss_t over all valid tokens; count = number of valid tokens.
* ``seq-mean-token-mean``: sum over sequences of the sequence's token mean; count = number
  of sequences with at least one valid token.
* ``seq-mean-token-sum-norm`` (Dr.GRPO): sum over sequences of (token sum / max_new_tokens);
  count = number of sequences (rows, fully masked ones included: a constant normalizer).

Counts depend on the mask only, never on parameters. Gradient accumulation in the train
step therefore is: ``n = loss_count(mask_of_whole_batch, config)`` (or the summed counts),
then over micro-batches ``g += grad(lambda p: terms(p)["loss"][0] / n)`` (or accumulate the
raw grads of the sums and divide by ``n`` once at the end); the result is the gradient of
the full-batch loss. Metrics other than the loss and its parts (``pg_loss``, ``kl_loss``) are
means over valid tokens (count = valid tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # pragma: no cover
    from .config import LossConfig

Array = jax.Array
Terms = dict[str, tuple[Array, Array]]

# name -> fn(logprobs, old_logprobs, mask_f, config) -> (log_ratio [B, T], eps_low, eps_high)
POLICY_LOSSES: dict[str, Callable[..., tuple[Array, float, float]]] = {}
# name -> fn(values [B, T], mask_f [B, T], max_new_tokens) -> (sum, count)
AGGREGATIONS: dict[str, Callable[..., tuple[Array, Array]]] = {}
# name -> fn(logprobs, ref_logprobs) -> per-token KL estimate
KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {}


def _register(table: dict, name: str):
    def deco(fn):
        if name in table:
            raise ValueError(f"{name!r} is already registered")
        table[name] = fn
        return fn

    return deco


def register_policy_loss(name: str):
    """Register ``fn(logprobs, old_logprobs, mask_f, config) -> (log_ratio, eps_low, eps_high)``."""
    return _register(POLICY_LOSSES, name)


def register_aggregation(name: str):
    """Register ``fn(values, mask_f, max_new_tokens) -> (sum, count)``."""
    return _register(AGGREGATIONS, name)


def register_kl_estimator(name: str):
    """Register ``fn(logprobs, ref_logprobs) -> per-token KL``."""
    return _register(KL_ESTIMATORS, name)


# ----------------------------------------------------------------------------- ratios
@register_policy_loss("ppo")
def _ppo_log_ratio(logprobs, old_logprobs, mask_f, config):
    return logprobs - old_logprobs, config.eps_low, config.eps_high


@register_policy_loss("gspo")
def _gspo_log_ratio(logprobs, old_logprobs, mask_f, config):
    n = jnp.maximum(mask_f.sum(axis=1, keepdims=True), 1.0)
    seq_log_ratio = ((logprobs - old_logprobs) * mask_f).sum(axis=1, keepdims=True) / n
    log_ratio = jax.lax.stop_gradient(seq_log_ratio) + logprobs - jax.lax.stop_gradient(logprobs)
    return log_ratio, config.gspo_eps_low, config.gspo_eps_high


# ----------------------------------------------------------------------------- aggregation
def _count(x) -> Array:
    return jnp.asarray(x).sum().astype(jnp.int32)


@register_aggregation("token-mean")
def _token_mean(values, mask_f, max_new_tokens):
    return (values * mask_f).sum(), _count(mask_f)


@register_aggregation("seq-mean-token-mean")
def _seq_mean_token_mean(values, mask_f, max_new_tokens):
    n = mask_f.sum(axis=1)
    per_seq = (values * mask_f).sum(axis=1) / jnp.maximum(n, 1.0)
    return per_seq.sum(), _count(n > 0)


@register_aggregation("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(values, mask_f, max_new_tokens):
    return (values * mask_f).sum() / max_new_tokens, jnp.asarray(values.shape[0], jnp.int32)


# ----------------------------------------------------------------------------- KL
@register_kl_estimator("k1")
def _k1(logprobs, ref_logprobs):
    return logprobs - ref_logprobs


@register_kl_estimator("k2")
def _k2(logprobs, ref_logprobs):
    return 0.5 * jnp.square(ref_logprobs - logprobs)


@register_kl_estimator("k3")
def _k3(logprobs, ref_logprobs):
    d = jnp.minimum(ref_logprobs - logprobs, 20.0)
    return jnp.exp(d) - 1.0 - d


# ----------------------------------------------------------------------------- public API
def loss_count(mask: Any, config: "LossConfig") -> Array:
    """The loss's count for ``mask`` (depends on the mask only): the global normalizer."""
    mask_f = jnp.asarray(mask).astype(jnp.float32)
    return AGGREGATIONS[config.agg](jnp.zeros_like(mask_f), mask_f, config.max_new_tokens)[1]


def _check_shapes(logprobs, advantages, mask, **others) -> None:
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must be [batch, tokens], got shape {tuple(logprobs.shape)}")
    for name, x in dict(mask=mask, **others).items():
        if x is not None and tuple(x.shape) != tuple(logprobs.shape):
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected {tuple(logprobs.shape)} (logprobs)"
            )
    if tuple(advantages.shape) != tuple(logprobs.shape[:1]):
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}, expected ({logprobs.shape[0]},)"
        )


def policy_loss_terms(
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    mask: Array,
    *,
    config: "LossConfig",
    ref_logprobs: Array | None = None,
    rollout_logprobs: Array | None = None,
    entropy: Array | None = None,
) -> Terms:
    """Additive ``{name: (sum, count)}`` terms of the policy loss and its metrics.

    Keys: ``loss``, ``pg_loss``, ``clip_frac_low``, ``clip_frac_high``, ``ratio_mean``,
    ``approx_kl`` (k3 of old vs current, per token); with ``kl_coef > 0``: ``kl_loss``;
    with ``ref_logprobs``: ``kl``; with ``rollout_logprobs``: ``is_weight_mean``,
    ``is_truncated_frac``, ``rollout_logprob_abs_diff`` (|logprobs - rollout|);
    with ``entropy``: ``entropy``. See the module docstring for the contract.
    """
    if config.kl_coef > 0 and ref_logprobs is None:
        raise ValueError("config.kl_coef > 0 needs ref_logprobs")
    logprobs, old_logprobs, advantages, mask = map(
        jnp.asarray, (logprobs, old_logprobs, advantages, mask)
    )
    _check_shapes(
        logprobs, advantages, mask, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
        rollout_logprobs=rollout_logprobs, entropy=entropy,
    )
    dtype = jnp.promote_types(logprobs.dtype, jnp.float32)
    valid = mask.astype(bool)
    mask_f = valid.astype(dtype)

    def clean(x):  # masked positions -> 0 so that garbage there never reaches a sum or grad
        return None if x is None else jnp.where(valid, jnp.asarray(x).astype(dtype), 0.0)

    lp, old, ref, rollout, ent = map(
        clean, (logprobs, old_logprobs, ref_logprobs, rollout_logprobs, entropy)
    )
    old = jax.lax.stop_gradient(old)
    adv = jax.lax.stop_gradient(advantages.astype(dtype))[:, None]
    n_tokens = _count(mask_f)

    def token_mean(x):
        return (jnp.where(valid, x, 0.0).astype(dtype).sum(), n_tokens)

    log_ratio, eps_low, eps_high = POLICY_LOSSES[config.loss](lp, old, mask_f, config)
    ratio = jnp.exp(log_ratio)
    pg = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high))
    clipped_low = (adv < 0) & (ratio < 1.0 - eps_low)
    clipped_high = (adv > 0) & (ratio > 1.0 + eps_high)

    terms: Terms = {}
    if rollout is not None:
        raw_w = jnp.exp(jax.lax.stop_gradient(old - rollout))
        w = jnp.minimum(raw_w, config.tis_cap)
        terms["is_weight_mean"] = token_mean(w)
        terms["is_truncated_frac"] = token_mean(raw_w > config.tis_cap)
        terms["rollout_logprob_abs_diff"] = token_mean(jnp.abs(jax.lax.stop_gradient(lp) - rollout))
        if config.use_tis:
            pg = pg * w

    agg = AGGREGATIONS[config.agg]
    loss_tok = pg
    terms["pg_loss"] = agg(pg, mask_f, config.max_new_tokens)
    if ref is not None:
        kl = KL_ESTIMATORS[config.kl_estimator](lp, jax.lax.stop_gradient(ref))
        terms["kl"] = token_mean(jax.lax.stop_gradient(kl))
        if config.kl_coef > 0:
            terms["kl_loss"] = agg(kl, mask_f, config.max_new_tokens)
            loss_tok = loss_tok + config.kl_coef * kl
    terms["loss"] = agg(loss_tok, mask_f, config.max_new_tokens)

    sg = jax.lax.stop_gradient
    terms["clip_frac_low"] = token_mean(clipped_low)
    terms["clip_frac_high"] = token_mean(clipped_high)
    terms["ratio_mean"] = token_mean(sg(ratio))
    tok_log_ratio = sg(lp - old)
    terms["approx_kl"] = token_mean(jnp.exp(tok_log_ratio) - 1.0 - tok_log_ratio)
    if ent is not None:
        terms["entropy"] = token_mean(sg(ent))
    return terms


def add_terms(a: Terms, b: Terms) -> Terms:
    """Element-wise sum of two term dicts with the same keys (for micro-batch accumulation)."""
    return jax.tree.map(jnp.add, a, b)


def finalize_terms(terms: Terms) -> dict[str, Array]:
    """``{name: sum / count}`` (0 where count is 0)."""
    out = {}
    for name, (s, c) in terms.items():
        c = jnp.asarray(c)
        out[name] = jnp.where(c > 0, s / jnp.maximum(c, 1).astype(jnp.asarray(s).dtype), 0.0)
    return out


def policy_loss(
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    mask: Array,
    *,
    config: "LossConfig",
    ref_logprobs: Array | None = None,
    rollout_logprobs: Array | None = None,
    entropy: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """``(loss, metrics)`` for one batch: ``finalize_terms(policy_loss_terms(...))``."""
    metrics = finalize_terms(
        policy_loss_terms(
            logprobs, old_logprobs, advantages, mask, config=config, ref_logprobs=ref_logprobs,
            rollout_logprobs=rollout_logprobs, entropy=entropy,
        )
    )
    return metrics["loss"], metrics
