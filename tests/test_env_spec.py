"""Tiny-model spec mode: the grammar, rendering specs into scripts, and the word tokenizer."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.env.spec import ESTIMATORS, PREPROCESS_PARAMS, Spec, SpecError, grammar_text, parse_spec, render_script
from rollout.env.word_tokenizer import SPECIALS, WordTokenizer, split_words

CLF_INFO = {"metric": "log_loss", "kind": "classification", "output": "proba_columns", "classes": ["0", "1"],
            "id_column": "id", "target_column": "y", "submission_columns": ["y_0", "y_1"]}
REG_INFO = {"metric": "rmse", "kind": "regression", "output": "value", "classes": [], "id_column": "id",
            "target_column": "y", "submission_columns": ["y"]}


@st.composite
def specs(draw):
    """Random specs that follow the grammar."""
    est = ESTIMATORS[draw(st.sampled_from(sorted(ESTIMATORS)))]
    params = draw(st.lists(st.sampled_from(est.params + PREPROCESS_PARAMS), unique_by=lambda p: p.name, max_size=4))
    values = []
    for p in params:
        if p.kind == "choice":
            values.append((p.name, draw(st.sampled_from(p.choices))))
        elif p.kind == "int":
            values.append((p.name, draw(st.integers(int(p.low), int(p.high)))))
        else:
            values.append((p.name, draw(st.floats(p.low, p.high, allow_nan=False))))
    return Spec(est.name, tuple(values))


@settings(max_examples=200, deadline=None)
@given(spec=specs())
def test_spec_text_round_trip(spec):
    assert parse_spec(spec.to_string()) == spec


@pytest.mark.parametrize("text,fragment", [
    ("", "empty spec"),
    ("max_depth=3 model=gbm", "starts with model="),
    ("model=xgboost", "allowed models are"),
    ("model=gbm depth=3", "unknown parameter 'depth' for model=gbm; allowed:"),
    ("model=gbm max_depth=0", "max_depth=0: allowed range is [1, 64]"),
    ("model=gbm max_depth=2.5", "max_depth=2.5: expected an integer"),
    ("model=gbm lr=fast", "lr=fast: expected a number"),
    ("model=gbm lr=nan", "allowed range"),
    ("model=knn weights=heavy", "allowed values are uniform, distance"),
    ("model=gbm max_depth=3 max_depth=4", "duplicate key 'max_depth'"),
    ("model=gbm max_depth", "expected <key>=<value>"),
])
def test_spec_errors_name_the_problem(text, fragment):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert fragment in str(err.value)


def test_resolve_to_estimators():
    (path, kwargs), pre = parse_spec("model=gbm max_depth=4 lr=0.1 scale=0").resolve("classification")
    assert path == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert kwargs["max_depth"] == 4 and kwargs["learning_rate"] == 0.1 and kwargs["random_state"] == 0
    assert pre == {"scale": 0}
    (path, kwargs), _ = parse_spec("model=svm C=2").resolve("classification", proba=True)
    assert path == "sklearn.svm.SVC" and kwargs["probability"] is True
    (path, kwargs), _ = parse_spec("model=mlp hidden=16").resolve("regression")
    assert path.endswith("MLPRegressor") and kwargs["hidden_layer_sizes"] == (16,)
    with pytest.raises(SpecError, match="for classification tasks only"):
        parse_spec("model=logreg").resolve("regression")
    with pytest.raises(SpecError, match="for regression tasks only"):
        parse_spec("model=ridge").resolve("classification")


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_renders_a_script_that_builds(name):
    import importlib

    for info in (CLF_INFO, REG_INFO):
        spec = parse_spec(f"model={name}")
        try:
            script = render_script(spec, info)
        except SpecError:
            continue  # this estimator has no variant for this kind of task
        compile(script, "solution.py", "exec")
        namespace: dict = {}
        exec(compile(script.replace('if __name__ == "__main__":', "if False:"), "solution.py", "exec"), namespace)
        model = namespace["build_model"](namespace["MODEL"])
        module, _, cls = namespace["MODEL"][0].rpartition(".")
        assert isinstance(model, getattr(importlib.import_module(module), cls))
        assert namespace["TASK"] == info and script.startswith(f"# spec: {spec.to_string()}")


def test_tokenizer_round_trip_and_specials():
    texts = [grammar_text(), "task iris classification metric accuracy maximize\nop draft\nnext spec:"]
    tok = WordTokenizer.build(texts)
    assert tok.vocab[:4] == list(SPECIALS) and (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    for text in texts:
        ids = tok.encode(text, add_bos=True, add_eos=True)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids) == text
    assert tok.encode("zebra") == [tok.unk_id] and tok.decode(tok.encode("zebra")) == "<unk>"
    assert "".join(split_words("a=1.25  b\n")) == "a=1.25  b\n"


@settings(max_examples=200, deadline=None)
@given(spec=specs())
def test_every_spec_round_trips_through_the_tokenizer(spec):
    tok = _spec_tokenizer()
    text = spec.to_string()
    assert tok.covers(text)
    assert parse_spec(tok.decode(tok.encode(text, add_eos=True))) == spec


_TOK = []


def _spec_tokenizer():
    if not _TOK:
        from rollout.env.spec import grammar_words

        _TOK.append(WordTokenizer.build([grammar_text()], extra=grammar_words()))
    return _TOK[0]


def test_tokenizer_save_load(tmp_path):
    tok = _spec_tokenizer()
    tok.save(tmp_path / "tok.json")
    again = WordTokenizer.load(tmp_path / "tok.json")
    assert again.vocab == tok.vocab and again.encode("model=rf k=3") == tok.encode("model=rf k=3")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="special tokens"):
        WordTokenizer(["a", "b"])
