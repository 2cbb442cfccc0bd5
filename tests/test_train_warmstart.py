"""The warm start has its own optimizer: RL starts at step 0 of its schedule with fresh moments."""

import jax
import numpy as np
import pytest

from ace_jax.commands.demo import DEMO_CONFIG
from ace_jax.config import load_config
from ace_jax.train.loop import Trainer
from ace_jax.train.optimizer import learning_rate_schedule
from ace_jax.train.warmstart import warmstart_optimizer


def test_warmstart_optimizer_is_a_constant_rate_adamw_of_the_same_shape():
    cfg = load_config(DEMO_CONFIG, ["optimizer.warmup_steps=5", "optimizer.total_steps=40"]).optimizer
    sft = warmstart_optimizer(cfg, steps=150)
    rates = [float(sft.schedule(i)) for i in (0, 75, 149)]
    assert rates == pytest.approx([cfg.learning_rate] * 3)
    rl = learning_rate_schedule(cfg)
    assert float(rl(0)) == 0.0 and float(rl(5)) == pytest.approx(cfg.learning_rate)


def test_warmstart_learning_rate_overrides_the_rl_rate_for_the_warm_start_only():
    cfg = load_config(DEMO_CONFIG, ["optimizer.learning_rate=0.003", "train.warmstart_learning_rate=0.01"])
    sft = warmstart_optimizer(cfg.optimizer, steps=150, learning_rate=cfg.train.warmstart_learning_rate)
    assert [float(sft.schedule(i)) for i in (0, 149)] == pytest.approx([0.01, 0.01])
    assert float(learning_rate_schedule(cfg.optimizer)(0)) == pytest.approx(0.003)
    with pytest.raises(ValueError, match="warmstart_learning_rate"):
        warmstart_optimizer(cfg.optimizer, steps=150, learning_rate=-1.0)


@pytest.mark.slow
def test_rl_optimizer_starts_fresh_after_the_warm_start(tmp_path):
    cfg = load_config(DEMO_CONFIG, [
        f"train.run_dir={tmp_path / 'run'}", "train.steps=1", "train.warmstart_steps=3",
        "rollout.group_size=4", "rollout.states_per_step=2", "rollout.max_new_tokens=8",
        "env.sandbox=bwrap", "curriculum.capacity=64", "train.length_buckets=[64]", "train.heldout_eval=false"])
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        before = jax.tree.map(np.asarray, trainer.state.params)
        fresh_opt = jax.tree.map(np.asarray, trainer.state.opt_state)
        trainer.warm_start()
        after = jax.tree.map(np.asarray, trainer.state.params)
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
        # The RL state's step, hence its warmup and cosine schedule, has not moved ...
        assert int(trainer.state.step) == 0 and int(trainer.state.skipped) == 0
        assert np.asarray(trainer.state.rng).shape == (2,)   # not donated to the warm start's step
        # ... and its Adam moments are the fresh ones, not the warm start's.
        for a, b in zip(jax.tree.leaves(fresh_opt), jax.tree.leaves(trainer.state.opt_state)):
            np.testing.assert_array_equal(a, np.asarray(b))
        # A run in stages (ace-jax ablate: run(0), evaluate, run(4), ...) warm-starts once, not per stage.
        trainer.run(0)
        for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(trainer.state.params)):
            np.testing.assert_array_equal(a, np.asarray(b))
    finally:
        trainer.close()
