"""The ratio's old policy: the behaviour policy (engine logprobs) or the proximal (current) one,
and what the truncated importance weight is in each (checked against the NumPy reference loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ace_jax.grpo import LossConfig
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.train import create_train_state, make_batch, make_train_step, sequence_logprobs
from tests.test_grpo_losses import np_policy_loss

CFG = get_config("tiny-moe")


@pytest.fixture(scope="module")
def setup():
    """A state and a batch whose engine logprobs are the current policy's, shifted by +-0.5."""
    graphdef, state = create_train_state(Qwen3ForCausalLM(CFG, rngs=nnx.Rngs(0)), optax.sgd(0.0))
    rng = np.random.RandomState(0)
    prompts = [list(rng.randint(3, CFG.vocab_size, 5)) for _ in range(4)]
    comps = [list(rng.randint(3, CFG.vocab_size, 6)) for _ in range(4)]
    batch = make_batch(prompts, comps, [1.0, -1.0, 1.0, -1.0], buckets=(16,))
    current = np.asarray(sequence_logprobs(graphdef, state.params, jnp.asarray(batch.input_ids),
                                           jnp.asarray(batch.attention_mask)))
    shift = np.where(rng.rand(*current.shape) < 0.5, -0.5, 0.5)
    behaviour = np.where(batch.loss_mask > 0, current + shift, 0.0).astype(np.float32)
    return graphdef, state, batch._replace(rollout_logprobs=behaviour), current


def _metrics(setup, old, batch=None):
    graphdef, state, default, _ = setup
    batch = default if batch is None else batch
    step = make_train_step(graphdef, optax.sgd(0.0), LossConfig(old_logprobs=old), donate=False)
    return {k: float(v) for k, v in step(state, jax.tree.map(jnp.asarray, batch))[1].items()}


def test_behaviour_ratio_is_against_the_engine_and_clips(setup):
    _, _, batch, current = setup
    m = _metrics(setup, "behaviour")
    mask = batch.loss_mask > 0
    expected = np.exp(current - batch.rollout_logprobs)[mask].mean()
    assert m["ratio_mean"] == pytest.approx(expected, rel=1e-4)
    assert m["clip_frac_low"] > 0 and m["clip_frac_high"] > 0  # exp(+-0.5) is outside [0.8, 1.28]


def test_proximal_ratio_is_one_by_construction(setup):
    m = _metrics(setup, "proximal")
    assert m["ratio_mean"] == pytest.approx(1.0) and m["clip_frac_low"] == m["clip_frac_high"] == 0.0


@pytest.mark.parametrize("old", ["behaviour", "proximal"])
def test_train_step_loss_and_is_weight_match_the_numpy_reference(setup, old):
    """behaviour: old = the engine, so the IS weight is exp(0) = 1 and the (clipped) ratio is the
    whole correction; proximal: old = the current policy, ratio 1, and the weight is AReaL's
    decoupled min(pi_prox / pi_behav, tis_cap), some of it truncated here."""
    _, _, batch, current = setup
    mask = batch.loss_mask > 0
    shift = np.resize([-1.0, -0.5, 0.5], current.shape)  # exp(1) > tis_cap = 2: truncated
    behaviour = np.where(mask, current + shift, 0.0).astype(np.float32)
    batch = batch._replace(rollout_logprobs=behaviour)
    m = _metrics(setup, old, batch)
    prox = behaviour if old == "behaviour" else current
    loss, _, ref = np_policy_loss(current.astype(np.float64), prox.astype(np.float64), np.asarray(batch.advantages),
                                  mask, LossConfig(), rollout=behaviour.astype(np.float64))
    assert m["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-6)
    for key in ("is_weight_mean", "is_truncated_frac", "ratio_mean", "clip_frac_low", "clip_frac_high"):
        assert m[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    if old == "behaviour":
        assert ref["is_weight_mean"] == 1.0 and ref["clip_frac_low"] + ref["clip_frac_high"] > 0
    else:
        assert ref["ratio_mean"] == pytest.approx(1.0) and 0 < ref["is_truncated_frac"] < 1
        assert ref["is_weight_mean"] != pytest.approx(1.0, abs=0.05)


def test_unknown_old_policy_is_refused():
    with pytest.raises(ValueError, match="old_logprobs"):
        LossConfig(old_logprobs="current")
