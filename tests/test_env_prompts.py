"""Prompts (per operator, within a budget, never leaking q or answers) and response parsing."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.env.parsing import format_response, parse_code_response, parse_spec_response
from rollout.env.prompts import INSTRUCTIONS, approx_tokens, build_prompt, data_preview, spec_prompt
from rollout.env.state import Feedback, State
from rollout.env.tasks import TaskConfig, write_task
from rollout.env.word_tokenizer import WordTokenizer


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    rng = np.random.RandomState(0)
    train = pd.DataFrame({"id": np.arange(50), "a": rng.normal(size=50).round(3), "b": rng.choice(["x", "y"], 50)})
    train["target"] = (train.a * 10).round(2)
    test = pd.DataFrame({"id": np.arange(1000, 1020), "a": rng.normal(size=20).round(3), "b": "x"})
    answers = pd.DataFrame({"id": test.id, "target": 77.123456 + np.arange(20)})  # distinctive hidden values
    cfg = TaskConfig("toy", "rmse", "minimize", "regression", "id", "target", ("target",), (), 10.0, 1.0,
                     {"gold": 1.0, "silver": 2.0, "bronze": 3.0}, "train", "test")
    return write_task(tmp_path_factory.mktemp("tasks") / "toy", cfg, "# Toy\nPredict the target from a and b.",
                      train, test, pd.DataFrame({"id": test.id, "target": 0.0}), answers)


def test_prompt_per_operator(task):
    draft = build_prompt(State("toy"), task)
    assert draft.operator == "draft" and INSTRUCTIONS["draft"] in draft.user
    assert "Predict the target from a and b." in draft.user and "train.csv: 50 rows" in draft.user
    assert "Previous solution" not in draft.user
    code = "import pandas as pd\nprint('validation_metric: 0.25')\n"
    fb = Feedback(False, "crashed: exit code 1: KeyError: 'c'", "validation_metric: 0.25\n", "KeyError: 'c'\n",
                  0.25, 1.5)
    debug = build_prompt(State("toy", code, fb), task)
    assert debug.operator == "debug" and INSTRUCTIONS["debug"] in debug.user
    assert code.strip() in debug.user and "KeyError: 'c'" in debug.user and "0.25" in debug.user
    improve = build_prompt(State("toy", code, Feedback(True, "", "validation_metric: 0.25\n", "", 0.25)), task)
    assert improve.operator == "improve" and "valid submission" in improve.user
    assert [m["role"] for m in improve.messages()] == ["system", "user"]
    assert improve.text().startswith(improve.system)


def test_prompt_never_contains_hidden_score_or_answers(task):
    q = 0.8765432
    state = State("toy", "print('validation_metric: 0.5')", Feedback(True, "", "validation_metric: 0.5", "", 0.5), q=q)
    text = build_prompt(state, task).text() + spec_prompt(state, task)
    for form in (f"{q}", f"{q:.4f}", f"{q:.3f}", f"{q:.2f}", f"{q:.6g}", f"{q * 100:.1f}"):
        assert form not in text
    answers = pd.read_csv(task.answers_path)
    for value in answers["target"]:
        assert f"{value:.3f}" not in text
    assert "answers" not in text.lower() and "private" not in text.lower()


def test_prompt_fits_budget(task):
    long_code = "\n".join(f"x_{i} = {i} * 2  # step {i}" for i in range(3000))
    state = State("toy", long_code, Feedback(False, "crashed", "out\n" * 3000, "err\n" * 3000))
    prompt = build_prompt(state, task, budget_tokens=1500)
    assert prompt.truncated and approx_tokens(prompt.text()) <= 1500
    assert "x_0 = 0" in prompt.user and "x_2999 = 2999" in prompt.user  # code keeps head and tail
    assert "[truncated]" in prompt.user and INSTRUCTIONS["debug"] in prompt.user
    assert not build_prompt(State("toy"), task).truncated
    with pytest.raises(ValueError, match="too small"):
        build_prompt(state, task, budget_tokens=50)
    tok = WordTokenizer.build([build_prompt(state, task).text()])
    counted = build_prompt(state, task, budget_tokens=2000, count_tokens=lambda s: len(tok.encode(s)))
    assert len(tok.encode(counted.text())) <= 2000


def test_data_preview_reads_public_train_only(task):
    preview = data_preview(task)
    assert "id (num), a (num), b (str), target (num)" in preview and preview.count("\n") >= 6


code_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="`\r"), min_size=1, max_size=200)


@settings(max_examples=100, deadline=None)
@given(plan=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="`\r<>"), max_size=100),
       code=code_text)
def test_response_round_trip(plan, code):
    code = "\n".join(ln for ln in code.split("\n") if ln.strip()) or "pass"
    action = parse_code_response(format_response(plan, code))
    assert action.valid, action.reason
    assert action.code.strip("\n") == code.strip("\n") and action.plan == plan.strip()


def test_thinking_is_skipped():
    response = ("<think>maybe\n```python\nprint('draft')\n```\n</think>\nPlan: fit a forest.\n"
                "```python\nprint('final')\n```")
    action = parse_code_response(response)
    assert action.valid and action.code == "print('final')\n" and action.plan == "Plan: fit a forest."
    assert parse_code_response("<think>still thinking ```python\nx=1\n```").reason == "unterminated <think> block"


@pytest.mark.parametrize("response,truncated,reason", [
    ("I would fit a model.", False, "no ```python code block"),
    ("a\n```python\nx = 1\n```\nb\n```python\ny = 2\n```", False, "2 python code blocks"),
    ("```python\nx = 1\n```", True, "cut off at the length limit"),
    ("```python\nx = 1\n", False, "unterminated code block"),
    ("```python\n\n```", False, "empty"),
    ("```bash\nls\n```", False, "no ```python code block"),
])
def test_malformed_responses(response, truncated, reason):
    action = parse_code_response(response, truncated=truncated)
    assert not action.valid and reason in action.reason


def test_other_languages_and_untagged_blocks():
    action = parse_code_response("Run:\n```bash\npip list\n```\n```python\nimport numpy\n```")
    assert action.valid and action.code == "import numpy\n"
    assert parse_code_response("```\nprint(1)\n```").code == "print(1)\n"  # untagged counts as python
    # a fence with an info string inside a block is content, not a close
    inner = parse_code_response("```python\ns = '''\n```json\n'''\n```")
    assert inner.valid and "```json" in inner.code


def test_spec_responses():
    ok = parse_spec_response("<think>try trees</think>model=gbm max_depth=4 lr=0.1\nbecause trees")
    assert ok.valid and ok.code == "model=gbm max_depth=4 lr=0.1" and ok.plan == "because trees"
    assert "cut off" in parse_spec_response("model=gbm", truncated=True).reason
    bad = parse_spec_response("model=gbm depth=4")
    assert not bad.valid and "unknown parameter 'depth'" in bad.reason
    assert "empty response" in parse_spec_response("  \n").reason


def test_spec_prompt_of_a_long_parent_spec_fits_the_train_bucket(task):
    """A child's prompt quotes its parent's spec; a spec longer than the room left by the largest
    train bucket keeps its leading words instead of failing the step's batch."""
    from ace_jax.agent.codec import make_codec
    long_spec = "model=ridge " + " ".join(f"alpha={i}" for i in range(60))
    child = State("toy", code=long_spec, feedback=Feedback(valid=True, reason="ok", validation_metric=0.5))
    unbounded = make_codec("spec", [task]).encode_prompt(child, task)
    codec = make_codec("spec", [task], budget_tokens=64)
    ids = codec.encode_prompt(child, task)
    assert len(unbounded) > 64 >= len(ids) >= 58          # cut to the limit, not far below it
    text = codec.tokenizer.decode(ids)
    assert "model" in text and "ridge" in text and "validation" in text   # the head and the feedback survive
    assert codec.encode_prompt(State("toy"), task) == make_codec("spec", [task]).encode_prompt(State("toy"), task)
    with pytest.raises(ValueError, match="rollout.max_new_tokens"):
        make_codec("spec", [task], budget_tokens=4).encode_prompt(State("toy"), task)
