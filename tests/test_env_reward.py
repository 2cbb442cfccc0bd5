"""Reward, improvement, success and the child-state payload, as the spec states them."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.env.reward import W_VALID, improvement, normalized_score, step_reward
from rollout.env.state import ChildPayload, Feedback, State, content_hash, normalize_code, parse_validation_metric

unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(m=st.floats(-1e3, 1e3), base=st.floats(-1e3, 1e3), gap=st.floats(1e-3, 1e3))
def test_normalized_score_is_the_clipped_ratio(m, base, gap):
    ref = base + gap  # maximize: the reference is above the baseline
    assert normalized_score(m, base, ref, "maximize") == pytest.approx(min(max((m - base) / (ref - base), 0), 1))
    # minimize: the same numbers with the sign flipped give the same q
    assert normalized_score(-m, -base, -ref, "minimize") == pytest.approx(normalized_score(m, base, ref, "maximize"))


def test_normalized_score_examples():
    assert normalized_score(0.9, 0.5, 0.9, "maximize") == 1.0
    assert normalized_score(0.7, 0.5, 0.9, "maximize") == pytest.approx(0.5)
    assert normalized_score(0.4, 0.5, 0.9, "maximize") == 0.0
    assert normalized_score(2.0, 3.0, 1.0, "minimize") == pytest.approx(0.5)
    assert normalized_score(0.5, 3.0, 1.0, "minimize") == 1.0
    with pytest.raises(ValueError, match="not better"):
        normalized_score(0.5, 0.9, 0.5, "maximize")


@settings(max_examples=200, deadline=None)
@given(q_new=unit, q_parent=unit)
def test_improvement_formula(q_new, q_parent):
    expected = min(max((q_new - q_parent) / max(1 - q_parent, 0.1), 0), 1)
    assert improvement(q_new, q_parent) == pytest.approx(expected)


@settings(max_examples=200, deadline=None)
@given(q_new=unit, q_parent=unit, w=st.floats(0.0, 1.0))
def test_step_reward(q_new, q_parent, w):
    r = step_reward(True, q_new, q_parent, w)
    u = improvement(q_new, q_parent)
    assert r.valid and r.q == q_new and r.u == u
    assert r.reward == pytest.approx(w + (1 - w) * u)
    assert r.success == (u > 0.05)
    bad = step_reward(False, q_new, q_parent, w)
    assert (bad.reward, bad.success, bad.valid) == (0.0, False, False)


def test_reward_examples():
    assert W_VALID == 0.3
    root = step_reward(True, 0.5)  # roots have q_parent = 0
    assert root.u == 0.5 and root.reward == pytest.approx(0.65) and root.success
    same = step_reward(True, 0.5, 0.5)
    assert same.reward == pytest.approx(0.3) and not same.success
    near_top = step_reward(True, 0.99, 0.95)  # headroom floor 0.1: u = 0.04 / 0.1
    assert near_top.u == pytest.approx(0.4)
    assert not step_reward(True, 0.52, 0.5).success  # u = 0.04 <= 0.05
    assert step_reward(False, None).reward == 0.0


def test_operator_follows_state():
    assert State("t").operator == "draft"
    assert State("t", "code").operator == "debug"
    assert State("t", "code", Feedback(False, "crashed")).operator == "debug"
    assert State("t", "code", Feedback(True, "")).operator == "improve"


def test_content_hash_is_stable_63_bit_and_normalized():
    h = content_hash("iris", "print(1)\n")
    assert 0 <= h < 2**63
    assert h == content_hash("iris", "print(1)   \r\n\n\n")  # trailing spaces, CRLF, blank edge lines
    assert h != content_hash("wine", "print(1)\n") and h != content_hash("iris", "print(2)\n")
    assert normalize_code("\n\na = 1  \r\nb = 2\n\n") == "a = 1\nb = 2"
    # a fixed value: the hash must not change between runs or machines
    assert content_hash("t", "x") == int.from_bytes(__import__("hashlib").sha256(b"t\0x").digest()[:8], "big") & (2**63 - 1)


def test_payload_round_trip():
    p = ChildPayload("iris", "print(1)", "[stdout]\nvalidation_metric: 0.9", 0.7, content_hash("iris", "print(1)"),
                     True, "", 0.9)
    assert ChildPayload.from_dict(p.to_dict()) == p
    state = p.to_state(depth=2)
    assert state.code == "print(1)" and state.q == 0.7 and state.operator == "improve" and state.depth == 2


def test_parse_validation_metric():
    assert parse_validation_metric("a\nvalidation_metric: 0.91\nvalidation_metric: 0.93\n") == 0.93
    assert parse_validation_metric("Validation metric = -1.5e-2") == -0.015
    assert parse_validation_metric("no metric here") is None
