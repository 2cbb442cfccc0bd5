"""Exact resume: SIGKILL `ace-jax train` mid-step, rerun the same command, compare with an
uninterrupted run of the same seed (buffer, sampler, step, metrics lines, parameters)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ace_jax.commands.demo import DEMO_CONFIG
from ace_jax.train.checkpoint import TrainCheckpointer
from ace_jax.train.metrics_file import read_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Fields that describe the machine, not the learning: wall times and execution-cache counts.
MACHINE_KEYS = {"rollout_s", "generate_s", "execute_s", "update_s", "step_s", "cached_executions", "exec_cache_hits", "exec_cache_misses",
                "exec_cache_hit_rate"}
STEPS = 4   # checkpoints every 2 steps; killed after step 2, which no checkpoint holds


def _command(run_dir):
    return [sys.executable, "-m", "ace_jax.cli", "train", "--config", str(DEMO_CONFIG),
            f"train.run_dir={run_dir}", f"train.steps={STEPS}", "train.checkpoint_every=2", "train.seed=3",
            "train.warmstart_steps=4", "rollout.group_size=4", "rollout.states_per_step=2", "rollout.oversample=2",
            "rollout.max_new_tokens=8", "env.sandbox=bwrap", "curriculum.capacity=64", "train.length_buckets=[64]",
            "train.heldout_eval=false"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    return env


def _run(run_dir):
    done = subprocess.run(_command(run_dir), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _saved_steps(run_dir):
    """Checkpoint steps orbax has finished (it renames a step's temporary directory when done)."""
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def _kill_mid_run(run_dir):
    """SIGKILL the run as soon as metrics.jsonl holds a step the newest checkpoint does not;
    returns that checkpoint's step."""
    proc = subprocess.Popen(_command(run_dir), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 900
    try:
        while True:
            saved = _saved_steps(run_dir)
            if saved and 0 < saved[-1] < STEPS and len(read_metrics(metrics)) > saved[-1]:
                return saved[-1]
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach the kill point"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _final(run_dir):
    with TrainCheckpointer(run_dir / "checkpoints") as ckpt:
        return ckpt.restore()


def _comparable(record):
    return {k: v for k, v in record.items() if k not in MACHINE_KEYS}


@pytest.mark.slow
def test_sigkill_mid_step_then_rerun_equals_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(straight)
    saved = _kill_mid_run(killed)
    assert len(read_metrics(killed / "metrics.jsonl")) > saved   # lines of steps not checkpointed
    out = _run(killed)
    assert f"resumed {killed} at step {saved}" in out

    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(STEPS))   # no duplicate lines
    for ra, rb in zip(a, b):
        ca, cb = _comparable(ra), _comparable(rb)
        assert ca.pop("curriculum") == cb.pop("curriculum")
        assert ca.keys() == cb.keys()
        for key in ca:
            assert ca[key] == pytest.approx(cb[key], rel=1e-5, abs=1e-7), (ra["step"], key)

    fa, fb = _final(straight), _final(killed)
    assert fa.step == fb.step == STEPS
    assert json.dumps(fa.meta["buffer"], sort_keys=True) == json.dumps(fb.meta["buffer"], sort_keys=True)
    assert fa.meta["sampler"] == fb.meta["sampler"]
    assert json.dumps(fa.meta["curriculum_log"]) == json.dumps(fb.meta["curriculum_log"])
    assert fa.arrays.keys() == fb.arrays.keys()
    for name in fa.arrays:
        np.testing.assert_array_equal(fa.arrays[name], fb.arrays[name], err_msg=name)
    leaves_a, leaves_b = jax.tree.leaves(fa.state), jax.tree.leaves(fb.state)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=1e-5, atol=1e-6)
