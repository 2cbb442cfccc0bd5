"""The warm start has its own optimizer: RL starts at step 0 of its schedule with fresh moments;
with `train.warmstart_child_share` it also clones answers from made-up child states."""

import jax
import numpy as np
import pytest

from ace_jax.commands.demo import DEMO_CONFIG
from ace_jax.config import load_config
from ace_jax.train.loop import Trainer
from ace_jax.train.optimizer import learning_rate_schedule
from ace_jax.agent.codec import make_codec
from ace_jax.train.warmstart import made_up_child, warm_start, warmstart_optimizer, warmstart_texts
from rollout.engine import GenerateRequest, SamplingParams
from rollout.env.prepare import ensure_tasks
from rollout.env.prompts import spec_prompt
from rollout.env.parsing import parse_spec_response
from rollout.env.state import State


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


def test_made_up_children_prompt_like_the_curriculums_children():
    tasks = ensure_tasks()
    codec = make_codec("spec", list(tasks.values()))
    rng = np.random.default_rng(0)
    operators = set()
    for task in tasks.values():
        for answer in warmstart_texts(codec, {task.id: task})[task.id][:6]:
            child = made_up_child(task, answer, rng)
            operators.add(child.operator)
            text = spec_prompt(child, task)
            assert f"spec {answer}" in text and text.endswith("next spec:")
            assert codec.tokenizer.unk_id not in codec.encode_prompt(child, task)  # words the policy knows
    assert operators == {"improve", "debug"}


@pytest.mark.slow
def test_a_warm_start_with_children_answers_child_prompts_as_well_as_roots(tmp_path):
    """Warm-started on roots alone, the tiny policy writes a parseable spec from a child's prompt
    (`op improve` / `op debug`) almost never (0.00 against 0.54 from a root's, measured), so the
    curriculum's first children are hopeless; with `train.warmstart_child_share=0.5` it answers
    child prompts at more than half its root rate (0.45 against 0.75)."""
    cfg = load_config("configs/experiments/ablation.yaml", [
        f"train.run_dir={tmp_path / 'run'}", "train.steps=0", "train.seed=1", "train.heldout_eval=false",
        "train.warmstart_child_share=0.5", f"env.exec_cache_dir={tmp_path / 'exec-cache'}"])
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        trainer.warm_start()
        rng = np.random.default_rng(123)
        texts = warmstart_texts(trainer.codec, trainer.tasks)
        requests, kinds = [], []
        for task_id, task in sorted(trainer.tasks.items()):
            for j in range(3):
                child = made_up_child(task, texts[task_id][rng.integers(len(texts[task_id]))], rng)
                requests.append(GenerateRequest(trainer.codec.encode_prompt(child, task),
                                                SamplingParams(max_new_tokens=16, seed=j), n=8))
                kinds.append("child")
            requests.append(GenerateRequest(trainer.codec.encode_prompt(State(task_id), task),
                                            SamplingParams(max_new_tokens=16, seed=9), n=8))
            kinds.append("root")
        parsed: dict[str, list[bool]] = {"child": [], "root": []}
        for kind, group in zip(kinds, trainer.engine.generate(requests)):
            parsed[kind] += [parse_spec_response(trainer.codec.decode_response(c.token_ids)).valid for c in group]
    finally:
        trainer.close()
    child, root = np.mean(parsed["child"]), np.mean(parsed["root"])
    assert root > 0.4 and child >= 0.5 * root, (child, root)   # roots alone: 0.00 against 0.54


def test_child_share_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="warmstart_child_share"):
        warm_start(None, None, None, {}, steps=1, rows=1, buckets=(64,), seed=0, child_share=1.5)
