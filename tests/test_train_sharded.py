"""On 8 fake CPU devices the sharded GRPO step equals the single-device step (rule presets)."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ace_jax.grpo import LossConfig
from ace_jax.models import Qwen3ForCausalLM, get_config
from ace_jax.models.constraints import use
from ace_jax.train import create_train_state, make_batch, make_train_step
from ace_jax.train.sharded import batch_sharding_for, shard, train_state_sharding
from sharding.context import hooks_for
from sharding.mesh import build_mesh, load_mesh_config

CFG = get_config("tiny-moe")
# A large eps keeps Adam's first step linear in tiny gradients (no sign amplification of rounding).
OPT = optax.adamw(1e-2, eps=1e-2)


def _batch():
    rng = np.random.RandomState(0)
    lengths = [3, 7, 2, 5, 6, 1, 4, 8]
    prompts = [list(rng.randint(3, CFG.vocab_size, 5)) for _ in lengths]
    comps = [list(rng.randint(3, CFG.vocab_size, n)) for n in lengths]
    lps = [list(-rng.rand(n) * 3) for n in lengths]
    return make_batch(prompts, comps, rng.randn(8), lps, buckets=(16,))


@pytest.fixture(scope="module")
def reference():
    graphdef, state = create_train_state(Qwen3ForCausalLM(CFG, rngs=nnx.Rngs(0)), OPT)
    step = make_train_step(graphdef, OPT, LossConfig(), micro_batches=2, donate=False)
    new, metrics = step(state, jax.tree.map(jnp.asarray, _batch()))
    return graphdef, state, jax.tree.map(np.asarray, new), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_ep"])
def test_sharded_step_equals_single_device(reference, preset):
    graphdef, state, ref_state, ref_metrics = reference
    cfg = load_mesh_config(preset)
    mesh = build_mesh(cfg)
    state_sharding = train_state_sharding(state, OPT, mesh, cfg.rules)
    batch = _batch()
    batch_sharding = batch_sharding_for(batch, mesh, cfg.rules)
    step = make_train_step(graphdef, OPT, LossConfig(), micro_batches=2, donate=False,
                           state_sharding=state_sharding, batch_sharding=batch_sharding)
    with jax.set_mesh(mesh), use(hooks_for(cfg, mesh)):
        new, metrics = step(shard(state, state_sharding), shard(batch, batch_sharding))
    for key in ("loss", "grad_norm", "entropy", "rollout_logprob_abs_diff_max"):
        np.testing.assert_allclose(float(metrics[key]), ref_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)
    flat = jax.tree_util.tree_flatten_with_path(new.params)[0]
    for (path, a), b in zip(flat, jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    # Parameters stay laid out as the rules say after the update.
    for (path, a), s in zip(flat, jax.tree.leaves(state_sharding.params)):
        assert a.sharding.is_equivalent_to(s, a.ndim), jax.tree_util.keystr(path)


def _logits_rows(jaxpr, vocab: int) -> set[int]:
    """Rows (second-to-last dim) of every matmul producing [.., vocab] logits in `jaxpr`, nested ones too."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.shape[-1] == vocab:
            found.add(eqn.outvars[0].aval.shape[-2])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found |= _logits_rows(sub, vocab)
    return found


def test_logprob_chunk_is_sized_from_the_rows_on_each_device():
    """8 rows over 8 devices: each device holds 1 row, so its chunk takes the whole budget (all 63
    tokens of its row), not 1/8 of it as for 8 rows on one device."""
    from ace_jax.train import sequence_logprobs

    graphdef, params = nnx.split(Qwen3ForCausalLM(CFG, rngs=nnx.Rngs(0)))
    ids = jnp.ones((8, 64), jnp.int32)
    trace = lambda: jax.make_jaxpr(  # noqa: E731
        lambda p: sequence_logprobs(graphdef, p, ids, ids, chunk_size=256))(params).jaxpr
    assert _logits_rows(trace(), CFG.vocab_size) == {32}            # one device: 256 tokens / 8 rows
    cfg = load_mesh_config("fsdp")
    mesh = build_mesh(cfg)
    with use(hooks_for(cfg, mesh)):
        assert _logits_rows(trace(), CFG.vocab_size) == {63}        # 1 row per device: min(256, 63)
