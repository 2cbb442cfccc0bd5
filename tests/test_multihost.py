"""A multi-host launch on one machine: 2 processes x 4 CPU devices joined by jax.distributed
on localhost equal 1 process x 8 devices on the same mesh and seed (rewards, losses,
executions, one metrics line per step), each rollout executed once, and the run exports; the
same in train.mode async.

Both runs start from one warm start, run by the two processes (`train.steps=0` checkpoints the
warm-started policy at step 0) and copied: the warm start trains at a constant lr 1e-2 until its
gradients are tiny, where Adam amplifies the rounding of 2 x 4 against 1 x 8 reductions (this
machine: 2e-5 after 20 steps; CI's CPU: a different sampled token and a loss 3% apart)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ace_jax.commands.demo import DEMO_CONFIG

STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(run_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [f"train.run_dir={run_dir}", f"train.steps={STEPS}", "train.warmstart_steps=20",
            "train.checkpoint_every=1", "rollout.group_size=4", "rollout.states_per_step=2", "rollout.oversample=1",
            "rollout.temperature=0.3", "env.sandbox=bwrap",
            "env.workers=2", "curriculum.capacity=64", "train.length_buckets=[64,128]", "mesh=fsdp_ep",
            "train.heldout_eval=false", f"env.exec_cache_dir={run_dir}-exec-cache", *extra]


def _launch(run_dir: Path, devices: int, processes: int, extra: tuple[str, ...] = ()) -> list[str]:
    port = _free_port()
    procs = []
    for i in range(processes):
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(), "JAX_PLATFORMS": "cpu"}
        if processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                       JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ace_jax.cli", "train", "--config", str(DEMO_CONFIG), *_overrides(run_dir, extra)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=1200)
        assert p.returncode == 0, out[-4000:]
        outputs.append(out)
    return outputs


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A run directory holding one step-0 checkpoint: the warm start of two processes. The
    warm start does not depend on train.mode, so the sync and the async test share it."""
    warm = tmp_path_factory.mktemp("multihost") / "warm"
    _launch(warm, devices=4, processes=2, extra=("train.steps=0",))
    return warm


def copies(warm: Path, tmp_path: Path, names: tuple[str, ...]) -> list[Path]:
    """Run directories that each hold a copy of the warm start."""
    runs = [tmp_path / name for name in names]
    for run in runs:
        shutil.copytree(warm, run)
    return runs


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_mesh(warm, tmp_path):
    single, multi = copies(warm, tmp_path, ("single", "multi"))
    _launch(single, devices=8, processes=1)
    outputs = _launch(multi, devices=4, processes=2)
    assert "resumed" in outputs[0] and "warm start 1/" not in outputs[0]  # from the copy, not a second warm start

    one, two = _metrics(single), _metrics(multi)
    assert [r["step"] for r in two] == list(range(STEPS))      # one line per step, written by process 0
    # Every step equal; losses to rounding (the reductions of 2 x 4 and 1 x 8 sum in different orders).
    assert len(one) == len(two)
    for a, b in zip(one, two):
        for key in ("reward_mean", "valid_rate", "informative_groups", "executions", "cached_executions"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        for key in ("loss", "grad_norm"):
            if key in a:
                np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=1e-6, err_msg=f"{key} at step {a['step']}")
    assert any("grad_norm" in r for r in one)  # an update ran
    # Each rollout executed once: the two shares add up to the step's executions.
    for step, record in enumerate(two, start=1):
        shares = []
        for i, out in enumerate(outputs):
            line = next(ln for ln in out.splitlines() if ln.startswith(f"process {i}/2: executed") and
                        ln.endswith(f"in step {step}"))
            shares.append(int(line.split("executed ")[1].split(" of ")[0]))
            assert int(line.split(" of ")[1].split()[0]) == record["executions"]
        assert sum(shares) == record["executions"]
    assert "step 1/2" in outputs[0] and "step 1/2" not in outputs[1]  # process 0 alone reports

    out = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "ace_jax.cli", "export", "--run", str(multi), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import transformers
    transformers.AutoModelForCausalLM.from_pretrained(out)


ASYNC = ("train.mode=async", "train.max_staleness=1")


@pytest.mark.slow
def test_async_on_two_processes_equals_one_process(warm, tmp_path):
    """train.mode async on two processes sharing one mesh equals one process on that mesh: the
    staleness gate fixes the order of generations and updates whatever the timing, so every
    process takes the same steps with the same weights (and shares the executions)."""
    single, multi = copies(warm, tmp_path, ("single", "multi"))
    _launch(single, devices=8, processes=1, extra=ASYNC)
    _launch(multi, devices=4, processes=2, extra=ASYNC)
    one, two = _metrics(single), _metrics(multi)
    assert [r["step"] for r in two] == list(range(STEPS))
    # Equal on every step (losses to rounding), from one warm start.
    for a, b in zip(one, two):
        for key in ("reward_mean", "informative_groups", "executions", "staleness", "weight_version"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-6)
        assert b["staleness"] <= 1
