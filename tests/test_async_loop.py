"""train.mode async end to end on CPU: real engine, real bwrap sandbox, real buffer.

Both modes start from one warm-started checkpoint (a random policy writes no valid spec, so
without the warm start no group would carry signal and no update would run).
"""

import json
import shutil
import threading

import jax
import numpy as np
import pytest

from ace_jax.commands.demo import DEMO_CONFIG
from ace_jax.config import load_config
from ace_jax.train.learner import run_async
from ace_jax.train.loop import Trainer
from ace_jax.train.warm_checkpoint import write_warm_checkpoint

STATES = 2


def _config(run_dir, steps, mode="sync", s=1, warmstart=0, checkpoint_every=1):
    return load_config(DEMO_CONFIG, [
        f"train.run_dir={run_dir}", f"train.steps={steps}", f"train.warmstart_steps={warmstart}",
        f"train.checkpoint_every={checkpoint_every}", f"train.mode={mode}", f"train.max_staleness={s}",
        "rollout.group_size=4", f"rollout.states_per_step={STATES}", "rollout.oversample=1",
        "rollout.max_new_tokens=16", "env.sandbox=bwrap", "env.timeout_s=30", "curriculum.capacity=64",
        "train.length_buckets=[128]"])


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A run directory holding the warm-started policy as its step-0 checkpoint."""
    run_dir = tmp_path_factory.mktemp("warm") / "run"
    write_warm_checkpoint(_config(run_dir, 0, warmstart=150))
    return run_dir


def _copy(warm, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(warm, dst)
    return dst


def _run(cfg):
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        summary = trainer.run()
        return summary, jax.tree.map(np.asarray, trainer.state.params), trainer.buffer.state_dict()
    finally:
        trainer.close()


@pytest.mark.slow
def test_async_with_staleness_zero_gives_the_updates_of_sync(warm, tmp_path):
    runs = {}
    for mode in ("sync", "async"):
        run_dir = _copy(warm, tmp_path, mode)
        runs[mode] = (*_run(_config(run_dir, 3, mode=mode, s=0)),
                      [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()])
    (s_sum, s_params, s_buf, s_rec), (a_sum, a_params, a_buf, a_rec) = runs["sync"], runs["async"]
    assert s_sum["optimizer_steps"] >= 1, "the test needs at least one real update"  # RL updates only
    assert a_sum["optimizer_steps"] == s_sum["optimizer_steps"]
    for a, b in zip(jax.tree.leaves(s_params), jax.tree.leaves(a_params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for name, arr in s_buf["arrays"].items():
        np.testing.assert_array_equal(arr, a_buf["arrays"][name])
    for key in ("reward_mean", "informative_groups", "loss", "clip_frac_low", "clip_frac_high"):
        assert [r.get(key) for r in s_rec] == pytest.approx([r.get(key) for r in a_rec], abs=1e-6)
    assert a_sum["staleness_histogram"] == {"0": 3} and a_sum["groups_dropped_stale"] == 0
    assert {"staleness", "queue_depth", "producer_idle_s", "learner_idle_s"} <= set(a_rec[0])


@pytest.mark.slow
def test_async_stop_drops_in_flight_groups_and_resumes_consistently(warm, tmp_path):
    run_dir = _copy(warm, tmp_path, "stop")
    trainer = Trainer(_config(run_dir, 6, mode="async", s=1, checkpoint_every=5), echo=lambda s: None)
    stop = threading.Event()

    def log_and_stop(record, total, times):
        trainer.log_step(record, total, times)
        if trainer.step == 2:
            stop.set()  # what SIGTERM does

    try:
        summary = run_async(trainer, 6, log_and_stop, stop=stop)
        stopped_buffer = trainer.buffer.state_dict()
        trainer.checkpointer.wait()
    finally:
        trainer.close()
    assert summary["stopped_early"] and trainer.step == 2
    # Round 2 had been generated ahead (S = 1); it is dropped and counted, not used.
    assert summary["groups_dropped_in_flight"] in (STATES, 2 * STATES)
    assert summary["groups_generated"] == 2 * STATES + summary["groups_dropped_in_flight"]
    # The kept curriculum holds exactly the two rounds used: one visit per group, none twice.
    assert int(stopped_buffer["arrays"]["visits"].sum()) == 2 * STATES

    resumed = Trainer(_config(run_dir, 4, mode="async", s=1), echo=lambda s: None)
    try:
        assert resumed.step == 2
        restored = resumed.buffer.state_dict()
        for name, arr in stopped_buffer["arrays"].items():
            np.testing.assert_array_equal(arr, restored["arrays"][name])
        summary = resumed.run()
        visits = int(resumed.buffer.state_dict()["arrays"]["visits"].sum())
    finally:
        resumed.close()
    assert summary["steps"] == 4 and summary["groups_dropped_in_flight"] == 0
    assert set(summary["staleness_histogram"]) <= {"0", "1"} and summary["groups_dropped_stale"] == 0
    assert visits == 4 * STATES
