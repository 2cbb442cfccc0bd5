"""Every shipped experiment config, run as users launch it but in miniature: a tiny model
(for HF configs a checkpoint written by transformers, with the real Qwen3 vocabulary and
tokenizer), a few states, short generations, 8 fake CPU devices on an expert-parallel mesh.
Each run warm-starts, takes 2 AceGRPO steps through the update step, checkpoints, and is
exported with `ace-jax export`; transformers must load the export and agree with our model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ace_jax.checkpoint import hf
from ace_jax.config import load_config
from ace_jax.models import get_config
from ace_jax.train.loop import Trainer
from helpers.hf_models import random_hf_model
from rollout.env.prepare import ensure_tasks

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs" / "experiments").glob("*.yaml"))
MINI_TASKS = ("iris", "moons")


def _tiny_hf_checkpoint(path: Path) -> Path:
    """A Qwen3-MoE with the real vocabulary (151,936) and 8 experts, written by transformers."""
    cfg = get_config("tiny-moe", vocab_size=151936, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=8, num_hidden_layers=2, mlp_only_layers=(), moe_intermediate_size=16,
                     max_position_embeddings=4096, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    model = random_hf_model(cfg, seed=0, router_scale=0.5)
    model.generation_config.eos_token_id = [151645, 151643]
    model.save_pretrained(path)
    return path


def _task_dir(path: Path) -> Path:
    tasks = ensure_tasks()
    for task_id in MINI_TASKS:
        shutil.copytree(tasks[task_id].root, path / task_id)
    return path


@pytest.fixture(scope="module")
def exec_cache(tmp_path_factory) -> Path:
    """One execution cache for every config, as on a user's machine: a script one run executed
    is not executed again by the next."""
    return tmp_path_factory.mktemp("exec-cache")


def _shrink(config: Path, tmp_path: Path, exec_cache: Path) -> list[str]:
    """Overrides that only make the shipped config smaller (and CPU-runnable)."""
    raw = load_config(config)
    common = [f"train.run_dir={tmp_path / 'run'}", "train.steps=2", "train.checkpoint_every=1",
              "train.micro_batches=1", "rollout.states_per_step=2", "rollout.group_size=4", "rollout.oversample=1",
              "rollout.engine=jax", f"env.tasks={_task_dir(tmp_path / 'tasks')}", "env.workers=2",
              "env.timeout_s=60", "curriculum.capacity=64", "optimizer.warmup_steps=0",
              f"env.exec_cache_dir={exec_cache}", "train.heldout_steps=1",
              "train.heldout_seeds=1"]
    if raw.mesh is None:
        common.append("mesh=fsdp_ep")   # the demo runs single-device; in CI it runs expert parallel too
    if raw.env.mode == "code":
        hf_dir = _tiny_hf_checkpoint(tmp_path / "hf")
        return common + [f"model.hf={hf_dir}", "model.preset=null", "env.prompt_budget_tokens=640",
                         "rollout.max_new_tokens=48", "train.length_buckets=[1024]", "train.logprob_chunk=512",
                         "train.warmstart_steps=3"]
    return common + ["train.length_buckets=[64,128]", "train.warmstart_steps=100"]


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_config_runs_in_miniature(config, tmp_path, exec_cache):
    cfg = load_config(config, _shrink(config, tmp_path, exec_cache))
    trainer = Trainer(cfg, echo=print)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    # The update step compiled and ran on the mesh at the config's lengths: the warm start is
    # the same update (behaviour cloning = advantage 1, no importance weights) with its own
    # optimizer, so the RL state counts RL updates only. It compiles once per length bucket its
    # batches use (a made-up child's prompt can need the next bucket), never once per step.
    assert 1 <= summary["warmstart_step_compiles"] <= len(cfg.train.length_buckets) < cfg.train.warmstart_steps
    rl_updates = sum(r["informative_groups"] > 0 for r in records)
    assert summary["optimizer_steps"] == rl_updates
    if cfg.env.mode == "spec":
        # Spec mode learns fast enough in miniature that RL updates run too. (A tiny code-mode
        # policy cannot write a valid script in a few steps: its groups are all reward 0.)
        # One compile per batch shape (length bucket) the updates used, none per step.
        shapes = {r["batch_tokens"] for r in records if r["informative_groups"] > 0}
        assert rl_updates >= 1 and summary["train_step_compiles"] == len(shapes)
    if cfg.env.mode == "spec" and cfg.train.heldout_eval:
        # One agent step per held-out task: its greedy draft (a spec) is recorded exactly when it was valid.
        rows = json.loads((run / "heldout.json").read_text())["after"]["per_task_greedy"].values()
        assert any(r["valid"] for r in rows)
        assert all((r["draft"] is not None) == r["valid"] and (r["draft"] or "model=").startswith("model=")
                   for r in rows)
    assert all(0 <= r["executions"] <= r["states"] * cfg.rollout.group_size for r in records)
    out = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "ace_jax.cli", "export", "--run", str(run), "--out", str(out),
                           "--dtype", "float32"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = np.arange(3, 19)[None]
    with torch.no_grad():
        their_logits = theirs(input_ids=torch.as_tensor(ids)).logits.numpy()
    our_logits = np.asarray(hf.load(out, dtype="float32")(jnp.asarray(ids, jnp.int32)))
    assert np.abs(their_logits - our_logits).max() <= 1e-4
