"""Policy losses vs. a plain NumPy implementation (values, metrics, gradients) and the
(sum, count) accumulation contract."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ace_jax.grpo import (
    AGGREGATIONS,
    LossConfig,
    add_terms,
    finalize_terms,
    loss_count,
    policy_loss,
    policy_loss_terms,
)

MAX_NEW = 13


# ----------------------------------------------------------------------------- NumPy reference
def np_policy_loss(lp, old, adv, mask, cfg, ref=None, rollout=None, entropy=None):
    """Loop-by-loop reference: returns (loss, dloss/dlp [B, T], metrics)."""
    b_n, t_n = lp.shape
    tok_loss = np.zeros((b_n, t_n))
    tok_pg = np.zeros((b_n, t_n))
    tok_kl = np.zeros((b_n, t_n))
    tok_grad = np.zeros((b_n, t_n))
    tok = {k: [] for k in ("clip_low", "clip_high", "ratio", "approx_kl", "w", "trunc",
                           "absdiff", "kl", "ent")}
    for b in range(b_n):
        idx = [t for t in range(t_n) if mask[b, t]]
        a = adv[b]
        if cfg.loss == "gspo" and idx:
            s = math.exp(sum(lp[b, t] - old[b, t] for t in idx) / len(idx))
            el, eh = cfg.gspo_eps_low, cfg.gspo_eps_high
        else:
            el, eh = cfg.eps_low, cfg.eps_high
        for t in idx:
            r = s if cfg.loss == "gspo" else math.exp(lp[b, t] - old[b, t])
            unclipped = -a * r
            clipped = -a * min(max(r, 1 - el), 1 + eh)
            pg = max(unclipped, clipped)
            dpg = -a * r if unclipped >= clipped else 0.0  # d r_t / d lp_t = r (GSPO-token too)
            w = 1.0
            if rollout is not None:
                raw = math.exp(old[b, t] - rollout[b, t])
                tok["w"].append(min(raw, cfg.tis_cap))
                tok["trunc"].append(float(raw > cfg.tis_cap))
                tok["absdiff"].append(abs(lp[b, t] - rollout[b, t]))
                if cfg.use_tis:
                    w = min(raw, cfg.tis_cap)
            kl = dkl = 0.0
            if ref is not None:
                d = ref[b, t] - lp[b, t]
                kl, dkl = {"k1": (-d, 1.0), "k2": (0.5 * d * d, -d),
                           "k3": (math.exp(d) - 1 - d, 1 - math.exp(d))}[cfg.kl_estimator]
                tok["kl"].append(kl)
            tok_pg[b, t] = w * pg
            tok_kl[b, t] = kl
            tok_loss[b, t] = w * pg + cfg.kl_coef * kl
            tok_grad[b, t] = w * dpg + cfg.kl_coef * dkl
            tok["clip_low"].append(float(a < 0 and r < 1 - el))
            tok["clip_high"].append(float(a > 0 and r > 1 + eh))
            tok["ratio"].append(r)
            x = lp[b, t] - old[b, t]
            tok["approx_kl"].append(math.exp(x) - 1 - x)
            if entropy is not None:
                tok["ent"].append(entropy[b, t])

    n_b = mask.sum(axis=1)
    if cfg.agg == "token-mean":
        coef, denom = mask.astype(float), mask.sum()
    elif cfg.agg == "seq-mean-token-mean":
        coef, denom = mask / np.maximum(n_b, 1)[:, None], (n_b > 0).sum()
    else:
        coef, denom = mask / cfg.max_new_tokens, b_n

    def agg(x):
        return (coef * x).sum() / denom

    mean = lambda v: sum(v) / len(v)  # noqa: E731
    metrics = {
        "loss": agg(tok_loss), "pg_loss": agg(tok_pg), "clip_frac_low": mean(tok["clip_low"]),
        "clip_frac_high": mean(tok["clip_high"]), "ratio_mean": mean(tok["ratio"]),
        "approx_kl": mean(tok["approx_kl"]),
    }
    if rollout is not None:
        metrics.update(is_weight_mean=mean(tok["w"]), is_truncated_frac=mean(tok["trunc"]),
                       rollout_logprob_abs_diff=mean(tok["absdiff"]))
    if ref is not None:
        metrics["kl"] = mean(tok["kl"])
        if cfg.kl_coef > 0:
            metrics["kl_loss"] = agg(tok_kl)
    if entropy is not None:
        metrics["entropy"] = mean(tok["ent"])
    return agg(tok_loss), coef * tok_grad / denom, metrics


# ----------------------------------------------------------------------------- inputs
def make_inputs(loss, seed=0, b=8, t=11):
    """Random float64 inputs with a ragged mask, one fully masked row, NaN at masked slots."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    lengths[2] = 0
    mask = np.arange(t)[None, :] < lengths[:, None]
    old = np.log(rng.uniform(0.05, 1.0, size=(b, t)))
    scale = 0.35 if loss == "ppo" else 2e-3  # spread ratios across each clip range
    lp = old + scale * rng.standard_normal((b, t))
    ref = lp + 0.3 * rng.standard_normal((b, t))
    rollout = old + 0.6 * rng.standard_normal((b, t))  # some IS weights above the cap
    entropy = rng.uniform(0, 3, size=(b, t))
    adv = rng.standard_normal(b)
    adv[0] = 0.0
    lengths[[1, 3]] = t
    mask = np.arange(t)[None, :] < lengths[:, None]
    lp[1], adv[1] = old[1] + 3 * scale, 1.0  # ratio above 1 + eps_high: clipped high
    lp[3], adv[3] = old[3] - 3 * scale, -1.0  # ratio below 1 - eps_low: clipped low
    for x in (lp, old, ref, rollout, entropy):
        x[~mask] = np.nan  # garbage in padding must not leak
    return dict(lp=lp, old=old, adv=adv, mask=mask, ref=ref, rollout=rollout, entropy=entropy)


def _jax_loss(inp, cfg, use_ref, use_rollout, lp=None):
    return policy_loss(
        jnp.asarray(inp["lp"] if lp is None else lp), jnp.asarray(inp["old"]),
        jnp.asarray(inp["adv"]), jnp.asarray(inp["mask"]), config=cfg,
        ref_logprobs=jnp.asarray(inp["ref"]) if use_ref else None,
        rollout_logprobs=jnp.asarray(inp["rollout"]) if use_rollout else None,
        entropy=jnp.asarray(inp["entropy"]),
    )


VARIANTS = list(itertools.product(
    ["ppo", "gspo"], sorted(AGGREGATIONS), [None, "k1", "k2", "k3"], [False, True]
))


@pytest.mark.parametrize("loss,agg,kl,tis", VARIANTS)
def test_loss_value_metrics_and_grad_match_numpy(loss, agg, kl, tis):
    seed = VARIANTS.index((loss, agg, kl, tis))
    cfg = LossConfig(loss=loss, agg=agg, max_new_tokens=MAX_NEW,
                     kl_coef=0.0 if kl is None else 0.15, kl_estimator=kl or "k2", use_tis=tis)
    inp = make_inputs(loss, seed=seed)
    use_ref = kl is not None
    with jax.enable_x64(True):
        loss_j, metrics_j = _jax_loss(inp, cfg, use_ref, True)
        grad_j = jax.grad(lambda x: _jax_loss(inp, cfg, use_ref, True, lp=x)[0])(
            jnp.asarray(inp["lp"]))
    loss_np, grad_np, metrics_np = np_policy_loss(
        inp["lp"], inp["old"], inp["adv"], inp["mask"], cfg,
        ref=inp["ref"] if use_ref else None, rollout=inp["rollout"], entropy=inp["entropy"],
    )
    assert set(metrics_j) == set(metrics_np)
    for k, v in metrics_np.items():
        np.testing.assert_allclose(float(metrics_j[k]), v, rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(float(loss_j), loss_np, rtol=1e-10, atol=1e-12)
    grad_j = np.asarray(grad_j)
    assert np.all(grad_j[~inp["mask"]] == 0)
    np.testing.assert_allclose(grad_j, grad_np, rtol=1e-9, atol=1e-12)
    # the inputs exercise both clip sides and both branches of the gradient
    assert metrics_np["clip_frac_low"] + metrics_np["clip_frac_high"] > 0
    assert np.any(grad_np[inp["mask"]] != 0)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_ppo_grad_equals_finite_differences(agg):
    """The NumPy derivation itself, checked against central differences of the NumPy value."""
    cfg = LossConfig(agg=agg, max_new_tokens=MAX_NEW, kl_coef=0.2, kl_estimator="k3")
    inp = make_inputs("ppo", seed=7)
    args = (inp["old"], inp["adv"], inp["mask"], cfg)
    kw = dict(ref=inp["ref"], rollout=inp["rollout"])
    _, grad, _ = np_policy_loss(inp["lp"], *args, **kw)
    h = 1e-6
    for b, t in zip(*np.nonzero(inp["mask"])):
        up, dn = inp["lp"].copy(), inp["lp"].copy()
        up[b, t] += h
        dn[b, t] -= h
        fd = (np_policy_loss(up, *args, **kw)[0] - np_policy_loss(dn, *args, **kw)[0]) / (2 * h)
        assert abs(fd - grad[b, t]) < 1e-6, (b, t, fd, grad[b, t])


def test_gspo_token_form_matches_sequence_level_paper_objective():
    """Under seq-mean-token-mean the GSPO-token gradient equals the gradient of GSPO's
    sequence-level objective mean_i max(-A s_i, -A clip(s_i)) (finite differences)."""
    cfg = LossConfig(loss="gspo", agg="seq-mean-token-mean")
    inp = make_inputs("gspo", seed=11)
    mask, old, adv = inp["mask"], inp["old"], inp["adv"]

    def seq_objective(lp):
        vals = []
        for b in range(lp.shape[0]):
            idx = mask[b]
            if not idx.any():
                continue
            s = math.exp(np.mean(lp[b, idx] - old[b, idx]))
            c = min(max(s, 1 - cfg.gspo_eps_low), 1 + cfg.gspo_eps_high)
            vals.append(max(-adv[b] * s, -adv[b] * c))
        return np.mean(vals)

    with jax.enable_x64(True):
        g = np.asarray(jax.grad(lambda x: _jax_loss(inp, cfg, False, False, lp=x)[0])(
            jnp.asarray(inp["lp"])))
        val = float(_jax_loss(inp, cfg, False, False)[0])
    np.testing.assert_allclose(val, seq_objective(inp["lp"]), rtol=1e-10)
    h = 1e-7
    for b, t in zip(*np.nonzero(mask)):
        up, dn = inp["lp"].copy(), inp["lp"].copy()
        up[b, t] += h
        dn[b, t] -= h
        fd = (seq_objective(up) - seq_objective(dn)) / (2 * h)
        assert abs(fd - g[b, t]) < 1e-6, (b, t, fd, g[b, t])


def test_fp32_jit_matches_numpy():
    cfg = LossConfig(agg="seq-mean-token-mean", kl_coef=0.1)
    inp = make_inputs("ppo", seed=5)
    f = jax.jit(lambda lp, old, adv, m, ref, ro: policy_loss(
        lp, old, adv, m, config=cfg, ref_logprobs=ref, rollout_logprobs=ro))
    args = [jnp.asarray(inp[k], jnp.float32) for k in ("lp", "old", "adv")]
    loss32, _ = f(*args, jnp.asarray(inp["mask"]), jnp.asarray(inp["ref"], jnp.float32),
                  jnp.asarray(inp["rollout"], jnp.float32))
    ref_loss = np_policy_loss(inp["lp"], inp["old"], inp["adv"], inp["mask"], cfg,
                              ref=inp["ref"], rollout=inp["rollout"])[0]
    assert loss32.dtype == jnp.float32
    np.testing.assert_allclose(float(loss32), ref_loss, rtol=1e-5)


# ----------------------------------------------------------------------------- (sum, count)
def _terms(lp, inp, cfg, rows):
    return policy_loss_terms(
        lp, jnp.asarray(inp["old"][rows]), jnp.asarray(inp["adv"][rows]),
        jnp.asarray(inp["mask"][rows]), config=cfg, ref_logprobs=jnp.asarray(inp["ref"][rows]),
        rollout_logprobs=jnp.asarray(inp["rollout"][rows]), entropy=jnp.asarray(inp["entropy"][rows]),
    )


@pytest.mark.parametrize("loss", ["ppo", "gspo"])
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_micro_batch_accumulation_is_exact(loss, agg):
    """Summing (sum, count) terms over micro-batches (Python loop and lax.scan) gives the
    full-batch loss and metrics; accumulating grads of the sums / global count gives the
    full-batch gradient w.r.t. parameters shared by all rows."""
    cfg = LossConfig(loss=loss, agg=agg, max_new_tokens=MAX_NEW, kl_coef=0.05)
    b, t, k, n_micro = 12, 9, 5, 3
    inp = make_inputs(loss, seed=21, b=b, t=t)
    rng = np.random.default_rng(0)
    base = np.nan_to_num(inp["lp"], nan=-1.0).astype(np.float32)
    feats = (0.01 if loss == "gspo" else 0.3) * rng.standard_normal((b, t, k)).astype(np.float32)
    theta0 = jnp.asarray(rng.standard_normal(k), jnp.float32)

    def lp_of(theta, rows):
        return jnp.asarray(base[rows]) + jnp.asarray(feats[rows]) @ theta

    full_rows = np.arange(b)
    full_metrics = finalize_terms(_terms(lp_of(theta0, full_rows), inp, cfg, full_rows))
    full_grad = jax.grad(lambda th: finalize_terms(_terms(lp_of(th, full_rows), inp, cfg,
                                                          full_rows))["loss"])(theta0)

    micro = np.array_split(full_rows, n_micro)
    acc = None
    grad_acc = jnp.zeros(k)
    n_global = loss_count(inp["mask"], cfg)
    for rows in micro:
        terms = _terms(lp_of(theta0, rows), inp, cfg, rows)
        acc = terms if acc is None else add_terms(acc, terms)
        grad_acc = grad_acc + jax.grad(
            lambda th, rows=rows: _terms(lp_of(th, rows), inp, cfg, rows)["loss"][0])(theta0)
    assert int(acc["loss"][1]) == int(n_global)
    micro_metrics = finalize_terms(acc)
    assert set(micro_metrics) == set(full_metrics)
    for name in full_metrics:
        np.testing.assert_allclose(micro_metrics[name], full_metrics[name], rtol=2e-6,
                                   atol=1e-7, err_msg=name)
    np.testing.assert_allclose(grad_acc / n_global, full_grad, rtol=2e-5, atol=1e-7)

    # the same inside jit with lax.scan over stacked micro-batches
    stacked = {key: jnp.asarray(inp[key].reshape(n_micro, b // n_micro, *inp[key].shape[1:]))
               for key in ("old", "adv", "mask", "ref", "rollout", "entropy")}
    lp_stacked = jnp.asarray((base + feats @ np.asarray(theta0)).reshape(n_micro, b // n_micro, t))

    @jax.jit
    def scanned(lp_s, data):
        def body(carry, x):
            lp_mb, d = x
            terms = policy_loss_terms(
                lp_mb, d["old"], d["adv"], d["mask"], config=cfg, ref_logprobs=d["ref"],
                rollout_logprobs=d["rollout"], entropy=d["entropy"])
            return add_terms(carry, terms), None

        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(
            lambda: policy_loss_terms(lp_s[0], data["old"][0], data["adv"][0], data["mask"][0],
                                      config=cfg, ref_logprobs=data["ref"][0],
                                      rollout_logprobs=data["rollout"][0],
                                      entropy=data["entropy"][0])))
        return finalize_terms(jax.lax.scan(body, zero, (lp_s, data))[0])

    scan_metrics = scanned(lp_stacked, stacked)
    for name in full_metrics:
        np.testing.assert_allclose(scan_metrics[name], full_metrics[name], rtol=2e-6,
                                   atol=1e-7, err_msg=name)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_length_padding_does_not_change_the_loss(agg):
    cfg = LossConfig(agg=agg, max_new_tokens=MAX_NEW, kl_coef=0.1)
    inp = make_inputs("ppo", seed=4, b=5, t=8)
    padded = {k: (np.concatenate([v, np.full((v.shape[0], 6), np.nan if k != "mask" else False,
                                             dtype=v.dtype)], axis=1) if v.ndim == 2 else v)
              for k, v in inp.items()}
    full, m_full = _jax_loss(inp, cfg, True, True)
    pad, m_pad = _jax_loss(padded, cfg, True, True)
    np.testing.assert_allclose(pad, full, rtol=1e-6)
    for k in m_full:
        np.testing.assert_allclose(m_pad[k], m_full[k], rtol=1e-6, err_msg=k)


def test_fully_masked_rows_count_only_for_dr_grpo():
    inp = make_inputs("ppo", seed=8, b=4, t=6)
    extra = {k: (np.concatenate([v, np.full((2,) + v.shape[1:], np.nan if v.dtype != bool
                                            else False, dtype=v.dtype)]) if k != "adv"
                 else np.concatenate([v, [0.0, 0.0]])) for k, v in inp.items()}
    for agg in ("token-mean", "seq-mean-token-mean"):
        cfg = LossConfig(agg=agg)
        np.testing.assert_allclose(_jax_loss(extra, cfg, False, True)[0],
                                   _jax_loss(inp, cfg, False, True)[0], rtol=1e-6)
    cfg = LossConfig(agg="seq-mean-token-sum-norm", max_new_tokens=6)
    np.testing.assert_allclose(_jax_loss(extra, cfg, False, True)[0] * 6,
                               _jax_loss(inp, cfg, False, True)[0] * 4, rtol=1e-6)
    assert int(loss_count(extra["mask"], cfg)) == 6


def test_one_step_on_policy_ratio_is_one_and_kl_needs_reference():
    inp = make_inputs("ppo", seed=2)
    cfg = LossConfig()
    lp = jnp.asarray(inp["lp"], jnp.float32)
    loss, m = policy_loss(lp, jax.lax.stop_gradient(lp), jnp.asarray(inp["adv"], jnp.float32),
                          jnp.asarray(inp["mask"]), config=cfg)
    assert float(m["ratio_mean"]) == pytest.approx(1.0) and float(m["clip_frac_low"]) == 0.0
    assert "kl" not in m and "is_weight_mean" not in m and "kl_loss" not in m
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp, jnp.asarray(inp["adv"]), jnp.asarray(inp["mask"]),
                    config=cfg.replace(kl_coef=0.1))
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_loss(lp, lp, jnp.zeros(3), jnp.asarray(inp["mask"]), config=cfg)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        policy_loss(lp, lp[:, :3], jnp.asarray(inp["adv"]), jnp.asarray(inp["mask"]), config=cfg)
