"""The jit-compiled GRPO step: accumulation, padding, bucketed compiles, non-finite guard, restore."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ace_jax.grpo import LossConfig
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.train import (OptimizerConfig, create_train_state, make_batch, make_optimizer, make_train_step)
from ace_jax.train.checkpoint import TrainCheckpointer

BUCKETS = (16, 32)
CFG = get_config("tiny-moe")
OPT = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=50))
LOSS = LossConfig()
# Plain SGD (lr 1) for equivalence tests: the parameter change is exactly the gradient, whereas
# Adam's first step is ~lr * sign(g) and magnifies rounding noise in near-zero gradients.
SGD = optax.sgd(1.0)


def _batch(seed, lengths=(3, 7, 2, 5), buckets=BUCKETS, prompt_len=5):
    rng = np.random.RandomState(seed)
    prompts = [list(rng.randint(3, CFG.vocab_size, prompt_len)) for _ in lengths]
    comps = [list(rng.randint(3, CFG.vocab_size, n)) for n in lengths]
    adv = rng.randn(len(lengths)).astype(np.float32)
    lps = [list(-rng.rand(n).astype(np.float32) * 3) for n in lengths]
    return jax.tree.map(jnp.asarray, make_batch(prompts, comps, adv, lps, buckets=buckets))


def _fresh_state(optimizer=OPT):
    return create_train_state(Qwen3ForCausalLM(CFG, rngs=nnx.Rngs(0)), optimizer)


@pytest.fixture(scope="module")
def graphdef():
    return _fresh_state()[0]


@pytest.fixture(scope="module")
def step(graphdef):
    return make_train_step(graphdef, OPT, LOSS, micro_batches=1, donate=False)


def _assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


@pytest.fixture(scope="module")
def sgd_step(graphdef):
    return make_train_step(graphdef, SGD, LOSS, micro_batches=1, donate=False)


def test_micro_batches_equal_one_big_batch(graphdef, sgd_step):
    batch = _batch(0)
    _, state = _fresh_state(SGD)
    big, m_big = sgd_step(state, batch)
    micro_step = make_train_step(graphdef, SGD, LOSS, micro_batches=2, donate=False)
    small, m_small = micro_step(state, batch)
    _assert_trees_close(big.params, small.params, atol=1e-6)
    for key in ("loss", "pg_loss", "entropy", "grad_norm", "loss_tokens"):
        np.testing.assert_allclose(m_big[key], m_small[key], rtol=1e-5, atol=1e-7)
    assert int(big.step) == 1 and int(big.skipped) == 0
    # The update moved the parameters.
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(big.params), jax.tree.leaves(state.params))) > 1e-4


def test_padded_batch_gives_the_same_update(sgd_step):
    short, long = _batch(1, buckets=(16,)), _batch(1, buckets=(32,))
    assert short.input_ids.shape[1] == 16 and long.input_ids.shape[1] == 32
    _, state = _fresh_state(SGD)
    a, ma = sgd_step(state, short)
    b, mb = sgd_step(state, long)
    _assert_trees_close(a.params, b.params, atol=1e-6)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)


def test_compiles_at_most_once_per_length_bucket(graphdef):
    # Same program as `sgd_step`: a fresh jit object, so its own compile count starts at zero
    # (compiled code may come from the persistent cache).
    step = make_train_step(graphdef, SGD, LOSS, micro_batches=1, donate=False)
    _, state = _fresh_state(SGD)
    rng = np.random.RandomState(7)
    seen = set()
    for i in range(20):
        lengths = tuple(int(n) for n in rng.randint(1, 20, size=4))
        batch = _batch(i, lengths=lengths)
        seen.add(batch.input_ids.shape[1])
        state, metrics = step(state, batch)
    assert seen == set(BUCKETS)
    assert step._cache_size() == len(BUCKETS)
    assert int(state.step) == 20


def test_non_finite_update_is_skipped_and_counted(step):
    _, state = _fresh_state()
    bad = _batch(2)._replace(advantages=jnp.array([1.0, jnp.nan, 0.5, 0.0]))
    new, metrics = step(state, bad)
    assert int(new.skipped) == 1 and int(new.step) == 0 and int(metrics["skipped"]) == 1
    _assert_trees_close(new.params, state.params, atol=0)
    _assert_trees_close(new.opt_state, state.opt_state, atol=0)


def test_save_restore_then_step_is_bit_identical(step, tmp_path):
    _, state = _fresh_state()
    state, _ = step(state, _batch(3))
    with TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(1, state, arrays={"buffer_q": np.arange(5.0)}, meta={"note": "x"})
        ckpt.wait()
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = ckpt.restore(abstract)
    assert restored.step == 1 and restored.meta == {"note": "x"}
    np.testing.assert_array_equal(restored.arrays["buffer_q"], np.arange(5.0))
    batch = _batch(4)
    direct, m1 = step(state, batch)
    again, m2 = step(restored.state, batch)
    for x, y in zip(jax.tree.leaves(direct), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert float(m1["loss"]) == float(m2["loss"])


def test_bf16_moments_store_both_adam_moments_in_bf16():
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    opt = make_optimizer(OptimizerConfig(moments_dtype="bfloat16", warmup_steps=0))
    state = opt.init(params)
    adam = state[1]
    assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.bfloat16)}
    updates, state = opt.update({"w": jnp.full((4, 3), 0.5), "b": jnp.ones(3)}, state, params)
    assert {x.dtype for x in jax.tree.leaves(state[1].nu)} == {jnp.dtype(jnp.bfloat16)}
    assert all(bool(jnp.all(u < 0)) for u in jax.tree.leaves(updates))


def test_completion_window_equals_the_full_lm_head():
    """The LM head over each row's completion window gives the same step as over every token."""
    cfg = get_config("tiny-moe")
    graphdef, state = create_train_state(Qwen3ForCausalLM(cfg, rngs=nnx.Rngs(1)), SGD)
    rng = np.random.RandomState(3)
    prompts = [list(rng.randint(3, cfg.vocab_size, n)) for n in (9, 3, 14, 6)]
    comps = [list(rng.randint(3, cfg.vocab_size, n)) for n in (5, 7, 2, 7)]
    batch = jax.tree.map(jnp.asarray, make_batch(prompts, comps, rng.randn(4), [list(-rng.rand(len(c))) for c in comps],
                                                 buckets=(32,)))
    full = make_train_step(graphdef, SGD, LOSS, donate=False)
    windowed = make_train_step(graphdef, SGD, LOSS, donate=False, completion_window=7)
    (a, ma), (b, mb) = full(state, batch), windowed(state, batch)
    for key in ("loss", "grad_norm", "entropy"):
        np.testing.assert_allclose(float(mb[key]), float(ma[key]), rtol=1e-5, err_msg=key)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)
