"""Built-in tasks (deterministic, measured medals), mle-bench import, and the tasks / exec commands."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ace_jax.cli import main as cli_main
from rollout.env.builtin_tasks import BUILTIN_TASKS, TUNING_GRID
from rollout.env.execute import execute, step
from rollout.env.graders import grade_submission
from rollout.env.headroom import headroom_table, one_spec_for_all, one_spec_lines, task_headroom
from rollout.env.medals import medal_ranks, medal_thresholds
from rollout.env.metrics import aligned
from rollout.env.mlebench_import import import_mlebench
from rollout.env.prepare import ensure_tasks, prepare_builtin
from rollout.env.prompts import build_prompt, spec_prompt
from rollout.env.state import State
from rollout.env.spec import render_script
from rollout.env.spec_vocab import build_spec_tokenizer, sample_states
from rollout.env.tasks import default_tasks_dir, load_tasks
from rollout.sandbox.base import Limits
from rollout.sandbox.bwrap import BwrapSandbox
from rollout.sandbox.pool import WorkerPool

FIXTURE = Path(__file__).parent / "fixtures" / "mlebench"
COPY_SAMPLE = "import shutil\nshutil.copy('data/sample_submission.csv', 'submission.csv')\n"


@pytest.fixture(scope="module")
def builtin_root(tmp_path_factory):
    """A copy of the built-in tasks as the install prepared them (`ace-jax tasks prepare`, the same
    `prepare_builtin`; prepared now where missing or stale). A full preparation takes ~90 s on 2
    cores; `test_preparation_is_byte_identical` prepares four tasks again from scratch."""
    prepare_builtin(progress=print)
    root = tmp_path_factory.mktemp("tasks")
    for b in BUILTIN_TASKS:
        shutil.copytree(default_tasks_dir() / b.id, root / b.id)
    return root


@pytest.fixture(scope="module")
def bwrap():
    with BwrapSandbox() as sandbox:
        yield sandbox


def test_builtin_tasks_are_complete(builtin_root):
    tasks = load_tasks(builtin_root)
    assert len(tasks) >= 12 and set(tasks) == {b.id for b in BUILTIN_TASKS}
    splits = {t.config.split for t in tasks.values()}
    assert splits == {"train", "heldout"}
    assert {t.config.metric for t in tasks.values()} >= {"accuracy", "roc_auc", "log_loss", "rmse", "mae", "f1_macro"}
    for task in tasks.values():
        c = task.config
        gold, silver, bronze = (aligned(c.direction, c.medals[m]) for m in ("gold", "silver", "bronze"))
        assert gold >= silver >= bronze > aligned(c.direction, c.baseline_score), c.id
        # a small leaderboard: the fixed references plus the tuning grid, medals by Kaggle's ranks
        builtin = next(b for b in BUILTIN_TASKS if b.id == c.id)
        assert set(c.references) == set(builtin.references) | set(TUNING_GRID[c.kind])
        assert c.medals == medal_thresholds(list(c.references.values()), c.direction)
        assert c.reference_score == c.medals["gold"] == max(c.references.values(), key=lambda v: aligned(c.direction, v))
        # the baseline is the sample submission's score, measured by the grader
        assert grade_submission(task, task.public_dir / "sample_submission.csv").score == c.baseline_score
        public = {p.name for p in task.public_dir.iterdir()}
        assert public == {"train.csv", "test.csv", "sample_submission.csv"}
        assert c.target_column not in pd.read_csv(task.public_dir / "test.csv", nrows=1).columns


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_preparation_is_byte_identical(builtin_root, tmp_path):
    ids = ["iris", "wine", "mixed_types", "diabetes"]
    again = prepare_builtin(tmp_path, ids=ids)
    assert set(again) == set(ids)
    for task_id in ids:
        first, second = _files(builtin_root / task_id), _files(tmp_path / task_id)
        assert first.keys() == second.keys() and len(first) == 6
        for name in first:
            assert first[name] == second[name], f"{task_id}/{name} differs between preparations"


def test_ensure_tasks_prepares_only_missing_or_stale(builtin_root, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in builtin_root.rglob("task.yaml")}
    assert set(ensure_tasks(builtin_root)) == {b.id for b in BUILTIN_TASKS}
    assert before == {p: p.stat().st_mtime_ns for p in builtin_root.rglob("task.yaml")}
    prepare_builtin(tmp_path, ids=["iris"])
    cfg = tmp_path / "iris" / "task.yaml"
    cfg.write_text(cfg.read_text().replace("source: builtin-v", "source: builtin-old"))
    prepare_builtin(tmp_path, ids=["iris"])
    assert "source: builtin-v" in cfg.read_text()


def test_default_tasks_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ACE_JAX_HOME", str(tmp_path))
    assert default_tasks_dir() == tmp_path / "tasks"
    assert default_tasks_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("ACE_JAX_HOME")
    assert default_tasks_dir() == Path.home() / ".cache" / "ace-jax" / "tasks"


def _run(sandbox, slot, job):
    task, script = job
    return execute(task, script, sandbox, slot=slot, limits=Limits(timeout_s=120, memory_mb=3072))


# One task per metric (and the one with categorical columns and missing values).
REFERENCE_CHECKED = ("iris", "wine", "breast_cancer", "diabetes", "clf_imbalanced", "reg_linear", "mixed_types")


def test_references_reach_medals_and_trivial_solutions_do_not(builtin_root, bwrap):
    """The best reference, rendered and run in the sandbox, reaches gold; a trivial solution (the
    constant sample submission) is valid but wins nothing, on every task."""
    tasks = load_tasks(builtin_root)
    assert {tasks[t].config.metric for t in REFERENCE_CHECKED} == {t.config.metric for t in tasks.values()}
    jobs = []
    for task in tasks.values():
        c = task.config
        if task.id in REFERENCE_CHECKED:
            best = max(c.references, key=lambda s: aligned(c.direction, c.references[s]))
            jobs.append((task, render_script(best, task.template_info())))
        jobs.append((task, COPY_SAMPLE))
    with WorkerPool(bwrap, workers=2) as pool:
        results = pool.map(_run, jobs)
    for (task, script), res in zip(jobs, results):
        if script == COPY_SAMPLE:
            assert res.valid and res.medal is None and res.q == 0.0, (task.id, res.reason)
            assert res.reward.reward == pytest.approx(0.3) and not res.reward.success
        else:
            assert res.valid, (task.id, res.reason, res.feedback.stderr_tail[-500:])
            assert res.medal == "gold" and res.q == 1.0, (task.id, res.metric, task.config.medals)
            assert res.feedback.validation_metric is not None  # the script printed its own estimate


def test_spec_steps_and_tokenizer_on_builtin_tasks(builtin_root, bwrap):
    tasks = load_tasks(builtin_root)
    tok = build_spec_tokenizer(tasks.values())
    for task in tasks.values():
        for state in sample_states(task):
            text = spec_prompt(state, task)
            assert tok.covers(text) and tok.decode(tok.encode(text)) == text
    iris = tasks["iris"]
    weak = step(iris, "model=tree max_depth=1", bwrap, mode="spec", limits=Limits(timeout_s=60))
    assert weak.valid and weak.code == "model=tree max_depth=1" and weak.payload.code == weak.code
    assert weak.medal is None and 0.0 < weak.q < 1.0
    best = max(iris.config.references, key=iris.config.references.get)
    better = step(iris, best, bwrap, mode="spec", parent_q=weak.q, limits=Limits(timeout_s=60))
    assert better.reward.success and better.reward.u > 0.05 and better.medal == "gold"
    wrong_kind = step(iris, "model=ridge", bwrap, mode="spec")
    assert not wrong_kind.valid and "classification" in wrong_kind.reason and wrong_kind.execution is None


def test_tuned_references_leave_headroom_above_the_fixed_references(builtin_root):
    """The reference (q = 1) is the best of a hyperparameter search, so on most tasks none of
    the three fixed reference specs, the spec space's obvious picks, reaches it."""
    tasks = load_tasks(builtin_root)
    rows = [task_headroom(tasks[b.id], b.references) for b in BUILTIN_TASKS]
    below = [r["task"] for r in rows if max(r["references_q"].values()) < 1.0]
    assert len(below) >= len(rows) // 2, below
    for r in rows:
        assert len(r["references_q"]) == 3 and all(0.0 <= q <= 1.0 for q in r["references_q"].values())
        assert r["medals_q"]["gold"] == 1.0 >= r["medals_q"]["silver"] >= r["medals_q"]["bronze"] > 0.0
    assert "| iris |" in headroom_table(rows)


def test_one_spec_for_all_tasks_is_the_best_mean_q_of_the_specs_every_task_ran(builtin_root):
    tasks = load_tasks(builtin_root)
    summary = one_spec_for_all(tasks.values())
    for split, r in summary.items():
        group = [t.config for t in tasks.values() if t.config.split == split]
        common = sorted(set.intersection(*(set(c.references) for c in group)))
        sign = lambda c: 1.0 if c.direction == "maximize" else -1.0   # noqa: E731
        q = np.array([[np.clip((sign(c) * c.references[s] - sign(c) * c.baseline_score)
                               / (sign(c) * c.reference_score - sign(c) * c.baseline_score), 0, 1) for s in common]
                      for c in group])
        assert r["tasks"] == len(group) and r["specs"] == len(common) > 1
        assert r["best_q"] == pytest.approx(q.mean(0).max()) and r["best_spec"] == common[int(q.mean(0).argmax())]
        assert r["median_q"] == pytest.approx(np.median(q.mean(0)))
        assert r["best_q"] < 1.0   # no single spec is every task's best
    assert set(summary) == {"train", "heldout"} and "heldout: one spec for all" in one_spec_lines(summary)


def test_medal_ranks_follow_kaggle_rules():
    assert medal_ranks(50) == {"gold": 5, "silver": 10, "bronze": 20}
    assert medal_ranks(200) == {"gold": 10, "silver": 40, "bronze": 80}
    assert medal_ranks(500) == {"gold": 11, "silver": 50, "bronze": 100}
    assert medal_ranks(2000) == {"gold": 14, "silver": 100, "bronze": 200}
    assert medal_ranks(3) == {"gold": 1, "silver": 1, "bronze": 1}
    assert medal_thresholds([0.1, 0.5, 0.3, 0.9, 0.7] * 4, "maximize")["gold"] == 0.9
    assert medal_thresholds([0.1, 0.5, 0.3, 0.9, 0.7] * 4, "minimize")["gold"] == 0.1


def test_import_mlebench_fixture(tmp_path):
    report = import_mlebench(FIXTURE / "data", tmp_path, FIXTURE / "competitions")
    assert sorted(report.converted) == ["tiny-auc", "tiny-logloss", "tiny-rmse", "tiny-titanic"]
    assert "quadratic-weighted-kappa" in report.skipped["tiny-kappa"]
    assert "not a plain tabular" in report.skipped["tiny-images"]
    assert "leaderboard" in report.skipped["tiny-noboard"]
    tasks = load_tasks(tmp_path)
    assert set(tasks) == set(report.converted)
    for task_id, task in tasks.items():
        c = task.config
        board = pd.read_csv(FIXTURE / "competitions" / task_id / "leaderboard.csv")["score"].tolist()
        ordered = sorted(board, reverse=c.direction == "maximize")
        ranks = medal_ranks(len(board))
        assert c.medals == {m: ordered[ranks[m] - 1] for m in ("gold", "silver", "bronze")}
        assert c.reference_score == c.medals["gold"] and c.split == "heldout"
        assert (task.public_dir / "train.csv").read_bytes() == \
            (FIXTURE / "data" / task_id / "prepared" / "public" / "train.csv").read_bytes()
        sample = grade_submission(task, task.public_dir / "sample_submission.csv")
        assert sample.valid and sample.score == c.baseline_score
    titanic = tasks["tiny-titanic"]
    assert titanic.config.classes == ("False", "True") and titanic.config.id_column == "PassengerId"
    answers = pd.read_csv(FIXTURE / "data" / "tiny-titanic" / "prepared" / "private" / "test.csv")
    perfect = tmp_path / "perfect.csv"
    answers.to_csv(perfect, index=False)
    assert grade_submission(titanic, perfect).score == 1.0 and titanic.medal(1.0) == "gold"
    onehot = pd.read_csv(FIXTURE / "data" / "tiny-logloss" / "prepared" / "private" / "test.csv")
    onehot.to_csv(perfect, index=False)  # the one-hot answers themselves are a perfect probability submission
    assert grade_submission(tasks["tiny-logloss"], perfect).score < 1e-6


def _titanic_copy(tmp_path, answers: str) -> tuple[Path, Path]:
    """The fixture's tiny-titanic alone under tmp_path, its config naming `answers`; (data, competitions)."""
    import shutil
    data, comps = tmp_path / "data", tmp_path / "competitions"
    shutil.copytree(FIXTURE / "data" / "tiny-titanic", data / "tiny-titanic")
    shutil.copytree(FIXTURE / "competitions" / "tiny-titanic", comps / "tiny-titanic")
    config = comps / "tiny-titanic" / "config.yaml"
    config.write_text(config.read_text().replace("answers: tiny-titanic/prepared/private/test.csv",
                                                 f"answers: {answers}"))
    return data, comps


@pytest.mark.parametrize("answers", ["ABSOLUTE", "../outside.csv", "tiny-titanic/prepared/../../outside.csv",
                                     "other-comp/prepared/private/test.csv", "SYMLINK"])
def test_import_refuses_answers_outside_the_competition(tmp_path, answers):
    outside = tmp_path / "outside.csv"
    outside.write_bytes((FIXTURE / "data" / "tiny-titanic" / "prepared" / "private" / "test.csv").read_bytes())
    name = {"ABSOLUTE": str(outside), "SYMLINK": "tiny-titanic/prepared/private/link.csv"}.get(answers, answers)
    data, comps = _titanic_copy(tmp_path, name)
    (data / "other-comp" / "prepared" / "private").mkdir(parents=True)
    (data / "other-comp" / "prepared" / "private" / "test.csv").write_bytes(outside.read_bytes())
    (data / "tiny-titanic" / "prepared" / "private" / "link.csv").symlink_to(outside)
    report = import_mlebench(data, tmp_path / "out", comps)
    assert report.converted == [], report.skipped
    reason = report.skipped["tiny-titanic"]
    expected = {"ABSOLUTE": "absolute path", "SYMLINK": "symlink"}.get(answers, "outside the competition directory")
    assert expected in reason, reason


def test_import_refuses_a_symlinked_public_file(tmp_path):
    data, comps = _titanic_copy(tmp_path, "tiny-titanic/prepared/private/test.csv")
    train = data / "tiny-titanic" / "prepared" / "public" / "train.csv"
    train.unlink()
    train.symlink_to(data / "tiny-titanic" / "prepared" / "private" / "test.csv")
    report = import_mlebench(data, tmp_path / "out", comps)
    assert "symlink" in report.skipped["tiny-titanic"]


def test_import_takes_classes_from_public_data_only(tmp_path):
    data, comps = _titanic_copy(tmp_path, "tiny-titanic/prepared/private/test.csv")
    answers_path = data / "tiny-titanic" / "prepared" / "private" / "test.csv"
    answers = pd.read_csv(answers_path, dtype=str)
    answers.loc[0, "Transported"] = "SECRET_TEST_ONLY_LABEL"
    answers.to_csv(answers_path, index=False)
    report = import_mlebench(data, tmp_path / "out", comps)
    assert report.converted == ["tiny-titanic"], report.skipped
    task = load_tasks(tmp_path / "out")["tiny-titanic"]
    assert task.config.classes == ("False", "True")
    root = State("tiny-titanic")
    assert "SECRET" not in spec_prompt(root, task) and "SECRET" not in build_prompt(root, task).user


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli_main(list(argv))
    return code, capsys.readouterr().out


def test_cli_tasks_list_and_import(builtin_root, tmp_path, capsys):
    code, out = _cli(capsys, "tasks", "--dir", str(builtin_root), "list")
    assert code == 0
    lines = [ln.split("\t") for ln in out.strip().splitlines()]
    assert {tuple(ln) for ln in lines} == {(t.id, t.split) for t in BUILTIN_TASKS}
    code, out = _cli(capsys, "tasks", "--dir", str(tmp_path), "import-mlebench", str(FIXTURE / "data"),
                     "--competitions", str(FIXTURE / "competitions"))
    assert code == 0 and "converted\ttiny-auc" in out and "skipped\ttiny-kappa\tgrader" in out


def test_cli_exec_prints_json(builtin_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACE_JAX_SECRET_FOR_TEST", "do-not-leak")
    script = tmp_path / "solution.py"
    script.write_text("import os\nprint(sorted(os.environ))\n" + COPY_SAMPLE)
    code, out = _cli(capsys, "exec", "--dir", str(builtin_root), "--task", "wine", "--script", str(script),
                     "--sandbox", "bwrap", "--timeout", "30")
    result = json.loads(out)
    assert code == 0 and result["valid"] and result["sandbox"] == "bwrap" and result["reward"] == pytest.approx(0.3)
    assert set(result) >= {"valid", "metric", "q", "reward", "reason", "runtime", "sandbox", "stdout_tail", "stderr_tail"}
    assert "ACE_JAX_SECRET_FOR_TEST" not in result["stdout_tail"] and "OMP_NUM_THREADS" in result["stdout_tail"]
    spec = tmp_path / "spec.txt"
    wine = load_tasks(builtin_root)["wine"].config
    spec.write_text(max(wine.references, key=lambda k: aligned(wine.direction, wine.references[k])) + "\n")
    code, out = _cli(capsys, "exec", "--dir", str(builtin_root), "--task", "wine", "--script", str(spec), "--spec",
                     "--sandbox", "bwrap", "--timeout", "60")
    assert code == 0 and json.loads(out)["medal"] is not None
    assert cli_main(["exec", "--dir", str(builtin_root), "--task", "nope", "--script", str(script)]) == 2
    assert os.environ["ACE_JAX_SECRET_FOR_TEST"] == "do-not-leak"


def test_a_failed_preparation_leaves_no_staging_task_and_hidden_directories_are_not_tasks(builtin_root, tmp_path):
    """A preparation that fails (or is killed) must not leave a task with provisional scores
    (baseline 0, reference 1) that the next `load_tasks` would serve."""
    from rollout.env.builtin_tasks import BuiltinTask
    from rollout.env.prepare import prepare_one
    from rollout.env.spec import SpecError

    iris = next(b for b in BUILTIN_TASKS if b.id == "iris")
    broken = BuiltinTask("broken", "train", iris.metric, iris.target, iris.make, ("model",) + iris.references[1:],
                         iris.blurb)
    with pytest.raises(SpecError):
        prepare_one(broken, tmp_path / "broken", "builtin-v0")
    assert sorted(p.name for p in tmp_path.iterdir()) == []   # the staging directory is gone, no task
    # A staging directory left by a killed preparation is not loaded as a task.
    shutil.copytree(builtin_root / "iris", tmp_path / ".staging-moons-123")
    shutil.copytree(builtin_root / "moons", tmp_path / "moons")
    assert list(load_tasks(tmp_path)) == ["moons"]
