"""LossConfig: documented defaults, validation messages, coercion from YAML/CLI strings."""

import jax
import jax.numpy as jnp
import pytest

from ace_jax.grpo import LossConfig, policy_loss


def test_defaults_follow_acegrpo_md():
    c = LossConfig()
    assert (c.loss, c.eps_low, c.eps_high) == ("ppo", 0.2, 0.28)
    assert (c.gspo_eps_low, c.gspo_eps_high) == (3e-4, 4e-4)
    assert (c.agg, c.kl_coef, c.kl_estimator) == ("token-mean", 0.0, "k2")
    assert (c.use_tis, c.tis_cap) == (True, 2.0)
    assert (c.advantage, c.adv_ddof) == ("grpo", 1)


@pytest.mark.parametrize(
    "changes,pattern",
    [
        ({"loss": "ppo2"}, r"loss='ppo2' is not allowed; allowed: \['gspo', 'ppo'\]"),
        ({"agg": "mean"}, r"agg='mean'.*'seq-mean-token-mean', 'seq-mean-token-sum-norm'"),
        ({"kl_estimator": "k4"}, r"kl_estimator='k4'.*\['k1', 'k2', 'k3'\]"),
        ({"advantage": "ppo"}, r"advantage='ppo'.*\['dr_grpo', 'grpo', 'rloo'\]"),
        ({"eps_low": 1.0}, r"eps_low=1.0 is out of range; allowed: \[0.0, 1.0\)"),
        ({"eps_high": -0.1}, r"eps_high=-0.1 is out of range"),
        ({"kl_coef": float("nan")}, r"kl_coef must be a finite number"),
        ({"tis_cap": 0.0}, r"tis_cap=0.0 is out of range; allowed: \(0.0, inf\)"),
        ({"use_tis": 1}, r"use_tis must be true or false"),
        ({"adv_ddof": 2}, r"adv_ddof must be 0 or 1"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be a positive integer"),
        ({"agg": "seq-mean-token-sum-norm"}, r"max_new_tokens must be set"),
    ],
)
def test_bad_values_name_key_and_allowed_values(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        LossConfig(**changes)


def test_from_dict_unknown_key_and_coercion():
    with pytest.raises(ValueError, match=r"unknown LossConfig key\(s\) \['eps'\]; allowed: .*eps_high"):
        LossConfig.from_dict({"eps": 0.1})
    c = LossConfig.from_dict({"gspo_eps_low": "3e-4", "use_tis": "false", "max_new_tokens": "64",
                              "agg": "seq-mean-token-sum-norm"})
    assert c.gspo_eps_low == 3e-4 and c.use_tis is False and c.max_new_tokens == 64
    assert LossConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="kl_coef='x' is not a valid float"):
        LossConfig.from_dict({"kl_coef": "x"})


def test_config_is_hashable_and_a_static_jit_argument():
    f = jax.jit(lambda lp, m, config: policy_loss(lp, lp, jnp.ones(2), m, config=config)[0],
                static_argnames="config")
    lp = jnp.full((2, 3), -1.0)
    m = jnp.ones((2, 3), bool)
    assert float(f(lp, m, config=LossConfig())) == pytest.approx(-1.0)
    assert hash(LossConfig()) == hash(LossConfig())
