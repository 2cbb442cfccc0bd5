"""The contrast task suite: tasks whose best answer depends on the task, prepared apart from the
core tasks and named `contrast:SPLIT` wherever a split is accepted."""

import pytest

from ace_jax.cli import main

from ace_jax.train.loop import select_tasks, vocabulary_tasks
from rollout.env.contrast_tasks import CONTRAST_TASKS, contrast_family
from rollout.env.headroom import one_spec_for_all
from rollout.env.prompts import spec_prompt
from rollout.env.spec import parse_spec
from rollout.env.state import State
from rollout.env.suites import SUITES, parse_split, suite_of_source


def test_split_names_resolve_to_a_suite_or_a_directory(tmp_path):
    assert parse_split("train") == (SUITES["core"], "train")
    assert parse_split("contrast:heldout") == (SUITES["contrast"], "heldout")
    assert parse_split(str(tmp_path)) is None
    assert parse_split("no-colon-here") is None
    with pytest.raises(ValueError, match="'contrast:tests'.*core, contrast.*train, heldout, all"):
        parse_split("contrast:tests")
    with pytest.raises(ValueError, match="'nosuch:train'"):
        parse_split("nosuch:train")
    assert suite_of_source("builtin-v2") is SUITES["core"]
    assert suite_of_source("builtin-contrast-v7") is SUITES["contrast"] and suite_of_source("mlebench") is None


@pytest.fixture(scope="module")
def contrast():
    return select_tasks("contrast:all")   # prepared by `make install` (ace-jax tasks --suite contrast prepare)


def test_the_suite_is_prepared_apart_from_the_core_tasks(contrast):
    assert sorted(contrast) == sorted(b.id for b in CONTRAST_TASKS)
    assert [t.config.split for t in contrast.values()].count("heldout") == 4
    assert {t.config.source for t in contrast.values()} == {SUITES["contrast"].source}
    assert not set(contrast) & set(select_tasks("all"))     # the demo's splits stay as they were
    assert sorted(select_tasks("contrast:heldout")) == sorted(k for k, t in contrast.items()
                                                             if t.config.split == "heldout")
    # A run on the suite builds its vocabulary over the core tasks and the whole suite, held-out
    # tasks included; so does a core run that evaluates on the suite's held-out split.
    train = select_tasks("contrast:train")
    assert set(vocabulary_tasks(train)) == set(select_tasks("all")) | set(contrast)
    assert set(vocabulary_tasks(select_tasks("train"), ("contrast:heldout",))) == set(select_tasks("all")) | set(contrast)


def test_the_best_answer_depends_on_the_task_and_the_prompt_shows_what_decides_it(contrast):
    """One spec for all tasks (even one per kind: the kind is in every prompt) stays well below
    each task's own best, the two families' best specs share no model, and the prompts of the two
    families differ in the feature count."""
    for split_kind, r in one_spec_for_all(contrast.values(), by_kind=True).items():
        assert r["best_q"] < 0.9, split_kind
    for split, r in one_spec_for_all(contrast.values()).items():
        assert r["best_q"] < 0.75, split
    best_models = {family: set() for family in ("wide", "narrow")}
    for task_id, t in contrast.items():
        c = t.config
        best = max(c.references, key=lambda s: c.references[s] * (1 if c.direction == "maximize" else -1))
        best_models[contrast_family(task_id)].add(parse_spec(best).model)
        features = "features 200 numeric" if contrast_family(task_id) == "wide" else "features 8 numeric"
        assert features in spec_prompt(State(task_id), t)
        assert task_id.startswith("contrast_") and "wide" not in spec_prompt(State(task_id), t)
    assert best_models["wide"] and best_models["narrow"] and not best_models["wide"] & best_models["narrow"]


def test_tasks_command_lists_and_reports_the_suites_headroom(contrast, capsys):
    assert main(["tasks", "--suite", "contrast", "list"]) == 0
    listed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert listed == {k: t.config.split for k, t in contrast.items()}
    assert main(["tasks", "--suite", "contrast", "headroom"]) == 0
    out = capsys.readouterr().out
    assert all(f"| {k} | " in out for k in contrast)
    assert "heldout regression: one spec for all 2 tasks" in out and "train: one spec for all 8 tasks" in out
