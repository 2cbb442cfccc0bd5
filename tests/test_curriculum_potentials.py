"""Each potential equals its formula (acegrpo.md), computed here independently."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ace_jax.curriculum import (POTENTIALS, CurriculumConfig, EvolvingBuffer, LPInputs,
                                get_potential, register_potential)
from ace_jax.curriculum.synthetic import fill_synthetic

N = 16
pos = arrays(np.float64, N, elements=st.floats(0.01, 60.0))
unit = arrays(np.float64, N, elements=st.floats(0.0, 1.0))
visits = arrays(np.int64, N, elements=st.integers(0, 10_000))


def _expected_4p1mp(a: float, b: float) -> float:
    """E[4 p (1 - p)] for p ~ Beta(a, b) from the Beta moments E[p], E[p^2]."""
    m1 = a / (a + b)
    m2 = a * (a + 1) / ((a + b) * (a + b + 1))
    return 4 * (m1 - m2)


@settings(max_examples=40, deadline=None)
@given(pos, pos, unit, visits, unit, st.floats(0.0, 2.0), st.floats(0.0, 0.5))
def test_every_potential_equals_its_formula(a, b, q, n, std, beta, c):
    cfg = CurriculumConfig(beta=beta, c=c)
    x = LPInputs(a, b, q.astype(np.float32), n.astype(np.int32), std.astype(np.float32))
    want = {
        "frontier": [_expected_4p1mp(a[i], b[i]) * (1 - float(x.q[i])) ** beta
                     + c / math.sqrt(1 + n[i]) for i in range(N)],
        "variance": [float(s) for s in x.ema_std],
        "p1mp": [4 * (a[i] / (a[i] + b[i])) * (1 - a[i] / (a[i] + b[i])) for i in range(N)],
        "uniform": [1.0] * N,
    }
    for name, expected in want.items():
        got = get_potential(name)(x, cfg)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14, err_msg=name)
        assert np.all(got >= 0) and np.all(got <= get_potential(name).bound(cfg) + 1e-12)


def test_frontier_at_the_prior_is_two_thirds_plus_the_bonus():
    x = LPInputs(np.array([1.0]), np.array([1.0]), np.zeros(1, np.float32),
                 np.zeros(1, np.int32), np.zeros(1, np.float32))
    assert get_potential("frontier")(x, CurriculumConfig())[0] == pytest.approx(2 / 3 + 0.1)
    # a proven frontier state (many counts at p = 1/2) outranks a new one
    y = x._replace(a=np.array([20.0]), b=np.array([20.0]), visits=np.array([30], np.int32))
    assert get_potential("frontier")(y, CurriculumConfig())[0] > 2 / 3 + 0.1


@pytest.mark.parametrize("name", sorted(POTENTIALS))
def test_buffer_lp_is_the_configured_potential(name):
    buf = EvolvingBuffer(CurriculumConfig(capacity=300, potential=name))
    fill_synthetic(buf, 300, np.random.default_rng(1), n_tasks=5)
    live = buf.live_slots()
    want = get_potential(name)(buf.lp_inputs(live), buf.config)
    np.testing.assert_array_equal(buf.lp[live], want)


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(ValueError, match=r"potential='nope'.*allowed: \['frontier'"):
        get_potential("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_potential("uniform", bound=lambda cfg: 1.0)(lambda x, cfg: x.a)


def test_a_registered_potential_becomes_a_config_choice():
    register_potential("half_test", bound=lambda cfg: 1.0)(lambda x, cfg: np.full(len(x.a), 0.5))
    try:
        buf = EvolvingBuffer(CurriculumConfig(capacity=50, potential="half_test"))
        fill_synthetic(buf, 50, np.random.default_rng(0), n_tasks=2)
        assert np.all(buf.lp[buf.live_slots()] == 0.5)
    finally:
        del POTENTIALS["half_test"]
