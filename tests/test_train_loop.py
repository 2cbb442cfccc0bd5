"""The AceGRPO loop end to end on CPU: real engine, real bwrap sandbox, real buffer; resume."""

import json

import jax
import numpy as np
import pytest

from ace_jax.commands.demo import DEMO_CONFIG
from ace_jax.config import load_config
from ace_jax.train.loop import Trainer

PNG = b"\x89PNG\r\n\x1a\n"


def _overrides(run_dir, steps):
    return [f"train.run_dir={run_dir}", f"train.steps={steps}", "train.warmstart_steps=2", "train.checkpoint_every=1",
            "rollout.group_size=4", "rollout.states_per_step=2", "rollout.oversample=1", "rollout.max_new_tokens=8",
            "env.sandbox=bwrap", "env.timeout_s=30", "curriculum.capacity=64", "train.length_buckets=[64]"]


def _config(run_dir, steps):
    return load_config(DEMO_CONFIG, [*_overrides(run_dir, steps), "train.heldout_eval=false"])


@pytest.mark.slow
def test_loop_runs_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    lines = []
    trainer = Trainer(_config(run_dir, 2), echo=lines.append)
    try:
        summary = trainer.run()
        params = jax.tree.map(np.asarray, trainer.state.params)
        buffer_state = trainer.buffer.state_dict()
        sampler_state = trainer.sampler.state_dict()
    finally:
        trainer.close()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    # RL updates only: the warm start has its own optimizer and step count.
    updates = sum("update_skipped_no_signal" not in r for r in records)
    assert summary["steps"] == 2 and summary["optimizer_steps"] == updates - summary["skipped_updates"]
    for r in records:
        assert r["states"] == 2 and 0.0 <= r["reward_mean"] <= 1.0 and "curriculum" in r
    # One progress line per step: its loss, or why it made no update (never `loss nan`).
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 2 and not any("nan" in line for line in progress)
    for r, line in zip(records, progress):
        assert ("update skipped (no informative group)" in line) == ("loss" not in r), line
    for name in ("training.png", "curriculum.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG
    # The engine compiled a bounded number of programs; the update at most once per bucket.
    assert summary["train_step_compiles"] <= 1

    resumed = Trainer(_config(run_dir, 3), echo=lambda s: None)
    try:
        assert resumed.step == 2
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed.state.params)):
            np.testing.assert_array_equal(a, np.asarray(b))
        restored = resumed.buffer.state_dict()
        for name, arr in buffer_state["arrays"].items():
            np.testing.assert_array_equal(arr, restored["arrays"][name])
        assert restored["payloads"]["payloads"] == buffer_state["payloads"]["payloads"]
        assert resumed.sampler.state_dict()["rng"] == sampler_state["rng"]
        summary = resumed.run()
    finally:
        resumed.close()
    assert summary["steps"] == 3 and summary["steps_this_run"] == 1


@pytest.mark.slow
def test_report_and_eval_of_a_run(tmp_path, capsys):
    from ace_jax.cli import main

    run_dir = tmp_path / "run"
    trainer = Trainer(_config(run_dir, 1), echo=lambda s: None)
    try:
        trainer.run()
    finally:
        trainer.close()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["step", "reward", "valid"] and "plot:" in out
    report = tmp_path / "eval.json"
    assert main(["eval", "--run", str(run_dir), "--tasks", "heldout", "--steps", "2", "--sandbox", "bwrap",
                 "--out", str(report)]) == 0
    summary = json.loads(report.read_text())
    assert summary["tasks"] == 4 and summary["steps"] == 2 and summary["checkpoint_step"] == 1
    assert 0.0 <= summary["valid_rate"] <= 1.0 and 1.0 <= summary["mean_steps_to_first_valid"] <= 3.0
    for task in summary["per_task"]:
        assert len(task["steps"]) == 2 and task["steps"][0]["operator"] == "draft"
    # What the steps after the draft added: best q minus the draft's q (0 for an invalid draft).
    gains = [t["best_q"] - (t["steps"][0]["q"] if t["steps"][0]["valid"] else 0.0) for t in summary["per_task"]]
    assert summary["mean_gain_after_draft"] == pytest.approx(np.mean(gains)) and min(gains) >= 0.0
    assert main(["report", str(tmp_path / "nope")]) == 2


@pytest.mark.slow
def test_loop_on_a_mesh_of_8_devices(tmp_path):
    cfg = load_config(DEMO_CONFIG, [
        f"train.run_dir={tmp_path / 'run'}", "train.steps=1", "train.warmstart_steps=2", "mesh=fsdp_ep",
        "train.heldout_eval=false",
        "rollout.group_size=4", "rollout.states_per_step=2", "rollout.oversample=1", "rollout.max_new_tokens=8",
        "env.sandbox=bwrap", "curriculum.capacity=64", "train.length_buckets=[64]"])
    lines = []
    trainer = Trainer(cfg, echo=lines.append)
    try:
        assert jax.device_count() == 8 and "fsdp=2, expert=4" in lines[0]
        summary = trainer.run()
        gate = trainer.state.params["runs"][0]["gate_proj"]
        assert gate.sharding.spec[1] == "expert"   # experts stay split over the expert axis
    finally:
        trainer.close()
    assert summary["steps"] == 1 and summary["skipped_updates"] == 0


@pytest.mark.slow
def test_hf_start_on_a_mesh_loads_sharded(tmp_path):
    from ace_jax.models import get_config
    from helpers.hf_models import random_hf_model
    from sharding.mesh import build_mesh, load_mesh_config
    from sharding.rules import sharding_mismatches

    from ace_jax.agent.codec import make_codec
    from ace_jax.train.loop import select_tasks, vocabulary_tasks
    # A HF model whose vocabulary is the spec codec's, as the trainer builds it.
    codec = make_codec("spec", list(vocabulary_tasks(select_tasks("train")).values()))
    random_hf_model(get_config("tiny-moe", vocab_size=codec.vocab_size), seed=2).save_pretrained(tmp_path / "hf")
    cfg = load_config(DEMO_CONFIG, [
        f"train.run_dir={tmp_path / 'run'}", "train.steps=0", "mesh=fsdp", f"model.hf={tmp_path / 'hf'}",
        "model.preset=null", "env.sandbox=bwrap"])
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        mesh_cfg = load_mesh_config("fsdp")
        assert sharding_mismatches(trainer.state.params, build_mesh(mesh_cfg), mesh_cfg.rules) == []
        assert trainer.state.params["embed"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    finally:
        trainer.close()


def _run_with_heldout(run_dir, steps):
    cfg = load_config(DEMO_CONFIG, [*_overrides(run_dir, steps), "train.heldout_seeds=2", "train.heldout_steps=2"])
    assert cfg.train.heldout_eval  # the demo config turns it on
    trainer = Trainer(cfg, echo=lambda s: None)
    try:
        return trainer.run()
    finally:
        trainer.close()


@pytest.mark.slow
def test_heldout_before_and_after_are_in_the_summary_and_survive_a_resume(tmp_path):
    run_dir = tmp_path / "run"
    summary = _run_with_heldout(run_dir, 1)
    before, after = summary["heldout_before"], summary["heldout_after"]
    detail = json.loads((run_dir / "heldout.json").read_text())   # per task, beside the summary
    for which, result in (("before", before), ("after", after)):
        assert result["tasks"] == 4 and result["seeds"] == 2 and result["temperature"] == 1.0
        assert set(result["greedy"]) == set(result["sampled"]) == {
            "valid_rate", "any_medal_rate", "mean_best_q", "mean_steps_to_first_valid", "mean_gain_after_draft"}
        for m in result["sampled"].values():
            assert m["std"] >= 0.0 and 0.0 <= m["mean"] <= 3.0
        assert 1.0 <= result["greedy"]["mean_steps_to_first_valid"] <= 3.0
        # Each task's greedy draft is recorded (its spec), None where the draft was not valid.
        rows = detail[which]["per_task_greedy"].values()
        assert len(rows) == 4 and all(r["draft"] is None or (r["valid"] and r["draft"].startswith("model="))
                                      for r in rows)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["heldout_before"] == before
    summary = _run_with_heldout(run_dir, 2)
    assert summary["heldout_before"] == before and summary["steps"] == 2
