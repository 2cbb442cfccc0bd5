"""Routing replay (R3): the engine's routed experts carried through the batch into the update.

The policy is a top-1 MoE (normalized top-k gates are then exactly 1), so once the routing is
fixed the router weights no longer change the output: perturbing the trainer's router changes
its own routing, and replaying the engine's routing must give back the engine's logprobs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ace_jax.grpo import LossConfig
from ace_jax.inference import Buckets, JaxEngine
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.train import create_train_state, make_batch, make_train_step, sequence_logprobs
from rollout.engine import GenerateRequest, SamplingParams

CFG = get_config("tiny-moe", num_experts_per_tok=1)
PROMPTS = [[5, 17, 33, 99, 250, 7, 8], [300, 12, 40]]
BUCKETS = (32,)


@pytest.fixture(scope="module")
def rollout():
    """(model, prompts, completions, engine logprobs, engine routed experts) at temperature 1."""
    model = Qwen3ForCausalLM(CFG, rngs=nnx.Rngs(0))
    engine = JaxEngine(model, buckets=Buckets(batch=(4,), prompt=(16,), generate=(16,)), eos_token_ids=[1], seed=3)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, seed=11)
    outs = engine.generate([GenerateRequest(p, sampling, n=2, return_logprob=True, return_routed_experts=True)
                            for p in PROMPTS])
    engine.close()
    prompts = [p for p, samples in zip(PROMPTS, outs) for _ in samples]
    comps = [list(c.token_ids) for samples in outs for c in samples]
    return model, prompts, comps, [c.logprobs for s in outs for c in s], [c.routed_experts for s in outs for c in s]


def _perturbed_params(model):
    """A copy of the model's params with every router matrix perturbed (the model is untouched)."""
    def perturb(path, x):
        if not any(getattr(k, "key", None) == "router" for k in path):
            return x
        return x + 3.0 * jnp.std(x) * jax.random.normal(jax.random.key(7), x.shape, x.dtype)
    return jax.tree_util.tree_map_with_path(perturb, nnx.split(model)[1])


def _batch(rollout):
    _, prompts, comps, lps, experts = rollout
    return make_batch(prompts, comps, np.ones(len(comps), np.float32), lps, buckets=BUCKETS, routed_experts=experts)


def test_replay_gives_the_engines_logprobs_under_a_perturbed_router(rollout):
    model = rollout[0]
    batch = jax.tree.map(jnp.asarray, _batch(rollout))
    graphdef, params = nnx.split(model)[0], _perturbed_params(model)
    mask = np.asarray(batch.loss_mask).astype(bool)
    own = nnx.merge(graphdef, params).forward(batch.input_ids, batch.attention_mask).router.expert_ids
    ran = np.asarray(batch.attention_mask).astype(bool)
    ran[np.arange(ran.shape[0]), ran.sum(1) - 1] = False  # the engine never ran the last token
    assert np.any(np.asarray(own)[ran] != np.asarray(batch.routed_experts)[ran]), "routing must differ"
    replay = sequence_logprobs(graphdef, params, batch.input_ids, batch.attention_mask,
                               routed_experts=batch.routed_experts)
    plain = sequence_logprobs(graphdef, params, batch.input_ids, batch.attention_mask)
    engine = np.asarray(batch.rollout_logprobs)
    np.testing.assert_allclose(np.asarray(replay)[mask], engine[mask], atol=1e-5)
    assert np.max(np.abs(np.asarray(plain)[mask] - engine[mask])) > 1e-3


@pytest.mark.parametrize("replay", [True, False])
def test_update_step_replays_routing_under_the_loss_switch(rollout, replay):
    model = rollout[0]
    graphdef, state = create_train_state(model, optax.sgd(0.0))
    state = state._replace(params=_perturbed_params(model))
    step = make_train_step(graphdef, optax.sgd(0.0), LossConfig(routing_replay=replay), donate=False)
    _, metrics = step(state, jax.tree.map(jnp.asarray, _batch(rollout)))
    diff = float(metrics["rollout_logprob_abs_diff_max"])
    assert (diff < 1e-5) if replay else (diff > 1e-3)


def test_misaligned_routing_is_refused():
    with pytest.raises(ValueError, match="routed_experts covers 3 tokens, the engine ran 5"):
        make_batch([[4, 5, 6]], [[7, 8, 9]], [1.0], [[0.0] * 3], buckets=BUCKETS,
                   routed_experts=[np.zeros((3, 2, 1), np.int32)])
