"""`ace-jax ablate`: the plan's checks, the per-arm summary, and a miniature run end to end."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest

from ace_jax.cli import main
from ace_jax.commands.demo import DEMO_CONFIG
from ace_jax.train.loop import select_tasks
from ace_jax.train.ablation import (AblationPlan, first_reaching, markdown, paired_with_frontier, step_ratios,
                                   summarize_arm)
from ace_jax.train.ablation_answers import answer_spread, answers_summary
from ace_jax.train.ablation_gain import curve_mean, gain_targets
from ace_jax.train.ablation_points import (SavedPoints, eval_steps, load_points, move_aside, points_before, run_key,
                                          save_points)

PNG = b"\x89PNG\r\n\x1a\n"


def _eval(q, valid):
    one = {"valid_rate": valid, "any_medal_rate": 0.0, "mean_best_q": q, "mean_steps_to_first_valid": 2.0,
           "mean_gain_after_draft": 0.0}
    sampled = {m: {"mean": v, "std": 0.0} for m, v in one.items()}
    return {s: {"greedy": one, "sampled": sampled} for s in ("heldout", "roots")}


def _points(arm, seed, qs, zero_variance_per_step=0):
    return [{"arm": arm, "seed": seed, "step": 2 * i, "rollouts": 16 * i, "groups": 4 * i,
             "zero_variance_groups": zero_variance_per_step * i, "train_reward": 0.5, "eval": _eval(q, 1.0)}
            for i, q in enumerate(qs)]


def test_plan_rejects_unknown_arms_and_bad_target_metrics():
    with pytest.raises(ValueError, match="unknown arm"):
        AblationPlan(config=None, arms=("frontier", "lp"))
    with pytest.raises(ValueError, match="target metric"):
        AblationPlan(config=None, target_metric="roots.sampled.reward")
    assert main(["ablate", "--config", "nope.yaml", "--out", "x"]) == 2


def test_steps_to_target_is_the_first_evaluation_that_reaches_it():
    plan = AblationPlan(config=None, target=0.8, target_metric="roots.sampled.mean_best_q", eval_seeds=1,
                        eval_every=5)
    points = _points("frontier", 0, [0.5, 0.85, 0.7, 0.9]) + _points("frontier", 1, [0.5, 0.6, 0.81, 0.9], 1) \
        + _points("frontier", 2, [0.1, 0.2, 0.3, 0.4], 2)
    assert first_reaching(points[:4], plan.target_metric, 0.8)["step"] == 2
    s = summarize_arm(points, plan)
    assert s["seeds"] == 3 and s["reached"] == 2
    assert s["steps_to_target"] == {"mean": 3.0, "std": 1.0} and s["rollouts_to_target"]["mean"] == 24.0
    assert s["final_target_metric"]["mean"] == pytest.approx((0.9 + 0.9 + 0.4) / 3)
    # Over all seeds, the run that never reaches the target counts as its last step (6) + eval_every (5).
    assert s["steps_to_target_all"]["mean"] == pytest.approx((2 + 4 + 11) / 3)
    # Zero-variance groups per sampled group at the end of each run: 0/12, 3/12, 6/12.
    assert s["zero_variance_share"]["mean"] == pytest.approx(0.25)
    lower = first_reaching(points[:4], "heldout.greedy.mean_steps_to_first_valid", 2.0)
    assert lower["step"] == 0   # lower is better for steps to first valid


def test_step_ratios_compare_frontier_with_every_other_arm_over_all_seeds():
    plan = AblationPlan(config=None, target=0.8, target_metric="roots.sampled.mean_best_q", eval_seeds=1,
                        eval_every=2)
    frontier = summarize_arm(_points("frontier", 0, [0.5, 0.85, 0.9]), plan)      # reaches at step 2
    uniform = summarize_arm(_points("uniform", 0, [0.5, 0.6, 0.7]), plan)         # never: 4 + 2
    roots = summarize_arm(_points("roots-only", 0, [0.5, 0.6, 0.81]), plan)       # at step 4
    assert step_ratios({"frontier": frontier, "uniform": uniform, "roots-only": roots}) == \
        {"uniform": pytest.approx(2 / 6), "roots-only": pytest.approx(2 / 4)}
    assert step_ratios({"uniform": uniform}) == {}


def test_a_target_no_run_reaches_gives_no_ratio_and_the_gain_view_still_compares():
    plan = AblationPlan(config=None, target=0.95, target_metric="roots.sampled.mean_best_q", eval_seeds=1,
                        eval_every=2)
    runs = {"frontier": [_points("frontier", s, [0.4, 0.7, 0.8]) for s in (0, 1)],
            "uniform": [_points("uniform", s, [0.4, 0.5, 0.65]) for s in (0, 1)]}
    gains = gain_targets([r for rs in runs.values() for r in rs], plan.target_metric)
    # From the step-0 mean 0.4 to the best arm's final mean 0.8: half way 0.6, 80% of the way 0.72.
    assert gains == {0.5: pytest.approx(0.6), 0.8: pytest.approx(0.72)}
    summaries = {arm: summarize_arm([p for r in rs for p in r], plan, gains) for arm, rs in runs.items()}
    # Neither arm reaches 0.95: both count 4 + 2 steps, a ratio of 1 that would say nothing.
    assert summaries["frontier"]["steps_to_target_all"] == summaries["uniform"]["steps_to_target_all"]
    assert np.isnan(step_ratios(summaries)["uniform"])
    assert summaries["frontier"]["steps_to_gain"][0.5]["mean"] == 2 and summaries["uniform"]["steps_to_gain"][0.5]["mean"] == 4
    assert summaries["uniform"]["reached_gain"] == {0.5: 2, 0.8: 0}
    assert step_ratios(summaries, 0.5) == {"uniform": pytest.approx(0.5)}
    assert step_ratios(summaries, 0.8) == {"uniform": pytest.approx(4 / 6)}   # uniform censored at 6
    assert curve_mean(runs["frontier"][0], plan.target_metric) == pytest.approx(0.75)   # steps 2 and 4
    table = markdown(summaries, plan, steps=4, gains=gains)
    assert "ratio frontier/uniform steps to target (all seeds): not measured" in table
    assert "ratio frontier/uniform steps to 50% of the gain (all seeds): 0.50" in table
    assert "| uniform | 4.0 ± 0.0 | 2/2 | 6.0 ± 0.0 | 0/2 | 0.575 ± 0.000 |" in table
    lower = gain_targets([_points("frontier", 0, [0.4, 0.7])], "heldout.greedy.mean_steps_to_first_valid")
    assert lower == {0.5: 2.0, 0.8: 2.0}   # every point says 2.0 steps: no gain


def _with_drafts(point, heldout, roots):
    point = {**point, "eval": {**point["eval"]}}
    for name, drafts in (("heldout", heldout), ("roots", roots)):
        point["eval"][name] = {**point["eval"][name], "per_task_greedy": {
            f"t{i}": {"valid": d is not None, "best_q": 0.5, "medal": None, "draft": d} for i, d in enumerate(drafts)}}
    return point


def test_answers_count_the_distinct_greedy_drafts_over_the_fixed_evaluations_tasks():
    gbm, rf = "model=gbm max_depth=3", "model=rf"
    start, end = _points("frontier", 0, [0.5, 0.9])
    run0 = [_with_drafts(start, [gbm, rf], [rf, None]), _with_drafts(end, [gbm, gbm], [gbm, gbm])]
    run1 = [_with_drafts(start, [gbm, rf], [rf, rf]), _with_drafts(end, [rf, gbm], [None, rf])]
    assert answer_spread(run0[0]) == {"distinct": 2.0, "modal_share": 0.5, "tasks": 4.0}   # the invalid one not counted
    assert answer_spread(run0[1]) == {"distinct": 1.0, "modal_share": 1.0, "tasks": 4.0}   # one answer for every task
    a = answers_summary([run0, run1])
    assert a["tasks"] == 4 and a["distinct_first"]["mean"] == 2.0 and a["distinct_last"] == {"mean": 1.5, "std": 0.5}
    assert a["modal_share_last"]["mean"] == pytest.approx((1.0 + 0.5) / 2) and a["modal_draft"] == gbm
    # Points saved before drafts were recorded give no answers table.
    assert answers_summary([_points("frontier", 0, [0.5, 0.9])]) is None
    plan = AblationPlan(config=None, target=0.8, target_metric="roots.sampled.mean_best_q", eval_seeds=1)
    table = markdown({"frontier": summarize_arm(run0 + [{**p, "seed": 1} for p in run1], plan)}, plan, steps=2)
    assert "| frontier | 2.0 -> 1.5 ± 0.5 | 0.75 ± 0.25 | `model=gbm max_depth=3` |" in table
    assert "Answers:" not in markdown({"frontier": summarize_arm(_points("frontier", 0, [0.5]), plan)}, plan, steps=2)


def test_arms_are_paired_with_frontier_seed_by_seed():
    plan = AblationPlan(config=None, target=0.8, target_metric="roots.sampled.mean_best_q", eval_seeds=1,
                        eval_every=2)
    points = (_points("frontier", 0, [0.5, 0.85, 0.9]) + _points("frontier", 1, [0.5, 0.6, 0.81])   # steps 2, 4
              + _points("uniform", 0, [0.5, 0.6, 0.7]) + _points("uniform", 1, [0.9, 0.9, 0.9])    # 6 (never), 0
              + _points("roots-only", 1, [0.5, 0.81, 0.81]))                                        # seed 1 only: 2
    paired = paired_with_frontier(points, plan)
    assert set(paired) == {"uniform", "roots-only"}
    assert paired["uniform"]["steps"] == {"mean": pytest.approx(0.0), "std": pytest.approx(4.0)}   # +4, -4
    assert (paired["uniform"]["frontier_fewer"], paired["uniform"]["frontier_more"]) == (1, 1)
    assert paired["uniform"]["final"]["mean"] == pytest.approx(((0.7 - 0.9) + (0.9 - 0.81)) / 2)
    assert paired["roots-only"]["seeds"] == 1 and paired["roots-only"]["steps"]["mean"] == -2.0
    assert paired_with_frontier([p for p in points if p["arm"] != "frontier"], plan) == {}
    # A table written while the ablation runs says how many of the planned seeds it holds.
    frontier = summarize_arm([p for p in points if p["arm"] == "frontier"], plan)
    table = markdown({"frontier": frontier}, dataclasses.replace(plan, seeds=5), steps=4, paired=paired)
    assert "5 seed(s) per arm (2 run so far)" in table and "| uniform | 2 | +0.0 ± 4.0 | 1 / 1 |" in table


def test_a_runs_key_ignores_where_it_lives_but_not_its_config():
    config = {"train": {"run_dir": "a/frontier/seed0", "seed": 0}, "optimizer": {"learning_rate": 1e-3}}
    moved = {**config, "train": {**config["train"], "run_dir": "copy/frontier/seed0"}}
    changed = {**config, "optimizer": {"learning_rate": 3e-3}}
    assert run_key(config, 1, 8) == run_key(moved, 1, 8)
    assert run_key(config, 1, 8) != run_key(changed, 1, 8) and run_key(config, 1, 8) != run_key(config, 2, 8)
    assert config["train"]["run_dir"] == "a/frontier/seed0"   # the caller's dict is left alone


def test_saved_points_round_trip_and_a_corrupt_file_is_named(tmp_path):
    points = [{"step": 0, "eval": {}}, {"step": 1, "eval": {}}]
    assert load_points(str(tmp_path / "run"), "k") is None
    save_points(str(tmp_path / "run"), "k", points, complete=False)
    assert load_points(str(tmp_path / "run"), "k") == SavedPoints(points, False)
    assert load_points(str(tmp_path / "run"), "other config") is None
    (tmp_path / "run" / "points.json").write_text('{"key": "k", "points": [')
    with pytest.raises(ValueError, match="points.json is not a run's evaluation points"):
        load_points(str(tmp_path / "run"), "k")


def test_a_resumed_run_keeps_the_points_before_its_checkpoint_only_when_they_are_all_there():
    assert eval_steps(8, 1) == list(range(9)) and eval_steps(8, 3) == [0, 3, 6, 8]
    saved = SavedPoints([{"step": s} for s in (0, 3, 6)], complete=False)
    assert points_before(saved, 6, 8, 3) == [{"step": 0}, {"step": 3}]   # step 6 is evaluated again
    assert points_before(saved, 0, 8, 3) == []                           # killed after the warm start
    assert points_before(saved, 4, 8, 3) is None                         # a checkpoint off the evaluation grid
    assert points_before(SavedPoints([{"step": 0}], False), 6, 8, 3) is None   # step 3's evaluation is missing
    assert points_before(None, 6, 8, 3) is None and points_before(None, 0, 8, 3) == []


def test_moving_a_run_aside_never_overwrites_an_earlier_one(tmp_path):
    run = tmp_path / "seed0"
    for n in (1, 2):
        run.mkdir()
        (run / "mark").write_text(str(n))
        assert move_aside(str(run)) == f"{run}.unused-{n}"
    assert [(tmp_path / f"seed0.unused-{n}" / "mark").read_text() for n in (1, 2)] == ["1", "2"] and not run.exists()


@pytest.mark.slow
def test_a_miniature_ablation_writes_its_table_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "ablation"
    command = ["ablate", "--config", str(DEMO_CONFIG), "--seeds", "1", "--arms", "frontier", "roots-only",
               "--out", str(out), "--eval-every", "1", "--eval-seeds", "1", "--target", "0.5",
               "train.steps=2", "train.warmstart_steps=4", "train.heldout_steps=1", "rollout.group_size=4",
               "rollout.states_per_step=2", "rollout.max_new_tokens=8", "env.sandbox=bwrap",
               "curriculum.capacity=64", "train.length_buckets=[64]", "train.heldout_tasks=contrast:heldout"]
    assert main(command) == 0
    table = (out / "ablation.md").read_text()
    # The fixed evaluation's held-out set is the config's `train.heldout_tasks`.
    point = json.loads((out / "frontier" / "seed0" / "points.json").read_text())["points"][0]
    assert sorted(point["eval"]["heldout"]["per_task_greedy"]) == sorted(select_tasks("contrast:heldout"))
    assert "| frontier | " in table and "| roots-only | " in table and table in capsys.readouterr().out
    assert "Paired with `frontier`" in table and "| roots-only | 1 | " in table and "of the gain" in table
    assert "| frontier | " in table.split("Answers:")[1] and "| roots-only | " in table.split("Answers:")[1]
    # The same command again reuses both finished runs (same config): same table, nothing trained.
    assert main(command) == 0
    assert capsys.readouterr().out.count("finished before, its points reused") == 2
    assert (out / "ablation.md").read_text() == table
    rows = list(csv.DictReader(open(out / "ablation.csv")))
    assert [(r["arm"], r["step"]) for r in rows] == [("frontier", "0"), ("frontier", "1"), ("frontier", "2"),
                                                     ("roots-only", "0"), ("roots-only", "1"), ("roots-only", "2")]
    # Both arms start from the same warm start: their step-0 evaluations are identical.
    skip = {"arm"}
    assert {k: v for k, v in rows[0].items() if k not in skip} == {k: v for k, v in rows[3].items() if k not in skip}
    assert float(rows[2]["rollouts"]) == 2 * 2 * 4   # 2 steps x 2 states (oversample 1) x G=4
    assert int(rows[2]["groups"]) == 4 and 0 <= int(rows[2]["zero_variance_groups"]) <= 4
    assert (out / "ablation.png").read_bytes()[:8] == PNG
    assert (out / "frontier" / "seed0" / "metrics.jsonl").is_file()

    # A copy of the directory reuses its finished runs: a run's key does not hold where it lives.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    on_copy = [str(copy) if part == str(out) else part for part in command]
    assert main(on_copy) == 0
    assert capsys.readouterr().out.count("finished before, its points reused") == 2
    # As if killed: roots-only after its step-1 evaluation (its last checkpoint is at step 2), and
    # frontier with its points lost but its checkpoints kept. roots-only resumes and keeps its
    # first two points; frontier is moved aside, not overwritten, and trained again. Both end as
    # the uninterrupted runs did.
    roots = copy / "roots-only" / "seed0" / "points.json"
    saved = json.loads(roots.read_text())
    roots.write_text(json.dumps({**saved, "points": saved["points"][:2], "complete": False}))
    (copy / "frontier" / "seed0" / "points.json").unlink()
    assert main(on_copy) == 0
    printed = capsys.readouterr().out
    assert "roots-only seed 0: resumed at step 2, 2 earlier evaluation(s) kept" in printed
    assert f"moved to {copy / 'frontier' / 'seed0'}.unused-1, trained again" in printed
    assert (copy / "frontier" / "seed0.unused-1" / "metrics.jsonl").is_file()
    assert list(csv.DictReader(open(copy / "ablation.csv"))) == rows
    # Another config in the same directory: its earlier run is moved aside, not overwritten.
    assert main([*on_copy[:on_copy.index("--arms")], "--arms", "roots-only", *on_copy[on_copy.index("--out"):],
                 "optimizer.learning_rate=1e-3"]) == 0
    assert f"holds a run of another config; moved to {copy / 'roots-only' / 'seed0'}.unused-1" in capsys.readouterr().out
    assert json.loads((copy / "roots-only" / "seed0.unused-1" / "points.json").read_text())["points"] == saved["points"]
