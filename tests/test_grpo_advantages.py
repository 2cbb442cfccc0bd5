"""Advantage estimators vs. plain per-group NumPy loops."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ace_jax.grpo import ADVANTAGE_ESTIMATORS, compute_advantages


def _reference(rewards, estimator, ddof, eps=1e-6, thr=1e-6):
    n, g = rewards.shape
    adv = np.zeros((n, g))
    keep = np.zeros(n, bool)
    for i in range(n):
        r = [float(x) for x in rewards[i]]
        mean = sum(r) / g
        pop_std = math.sqrt(sum((x - mean) ** 2 for x in r) / g)
        if pop_std < thr:
            continue
        keep[i] = True
        for j in range(g):
            if estimator == "grpo":
                std = math.sqrt(sum((x - mean) ** 2 for x in r) / (g - ddof))
                adv[i, j] = (r[j] - mean) / (std + eps)
            elif estimator == "dr_grpo":
                adv[i, j] = r[j] - mean
            else:  # rloo
                others = r[:j] + r[j + 1 :]
                adv[i, j] = r[j] - sum(others) / len(others)
    return adv, keep


def _rewards(seed=0, groups=9, g=8):
    rng = np.random.default_rng(seed)
    r = rng.uniform(0, 1, size=(groups, g))
    r[1] = 0.0  # all failed
    r[4] = 0.7  # all equal
    r[6, :] = 0.3
    r[6, 2] += 1e-8  # below the zero-variance threshold
    r[7] = np.where(rng.random(g) < 0.5, 0.0, 1.0)  # binary rewards
    r[7, 0], r[7, 1] = 0.0, 1.0
    return r


@pytest.mark.parametrize("estimator", sorted(ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize("ddof", [0, 1])
def test_estimators_match_numpy_reference(estimator, ddof):
    r = _rewards()
    adv, mask, n_zero = compute_advantages(r, estimator=estimator, ddof=ddof)
    ref_adv, ref_keep = _reference(r, estimator, ddof)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(mask, ref_keep)
    assert n_zero == int((~ref_keep).sum()) == 3
    assert isinstance(n_zero, int) and adv.shape == r.shape and mask.dtype == bool
    assert np.all(adv[~mask] == 0)


@pytest.mark.parametrize("estimator", sorted(ADVANTAGE_ESTIMATORS))
def test_jax_input_gives_same_result(estimator):
    r = _rewards(seed=3)
    adv_np, mask_np, n_np = compute_advantages(r.astype(np.float32), estimator=estimator)
    adv_j, mask_j, n_j = compute_advantages(jnp.asarray(r, jnp.float32), estimator=estimator)
    np.testing.assert_allclose(np.asarray(adv_j), adv_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask_j), mask_np)
    assert int(n_j) == n_np


def test_integer_rewards_and_grpo_normalization():
    adv, mask, n = compute_advantages(np.array([[1, 0, 0, 1], [2, 2, 2, 2]]))
    assert adv.dtype == np.float64 and mask.tolist() == [True, False] and n == 1
    # ddof=1: std of [1,0,0,1] is sqrt(1/3)
    np.testing.assert_allclose(adv[0], np.array([1, -1, -1, 1]) * 0.5 / (math.sqrt(1 / 3) + 1e-6))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'.*grpo"):
        compute_advantages(np.zeros((2, 4)), estimator="nope")
    with pytest.raises(ValueError, match=r"\[groups, G\]"):
        compute_advantages(np.zeros(4))
    with pytest.raises(ValueError, match="G >= 2"):
        compute_advantages(np.zeros((3, 1)), estimator="rloo")
    with pytest.raises(ValueError, match="non-finite.*\\[1\\]"):
        compute_advantages(np.array([[0.0, 1.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="ddof"):
        compute_advantages(np.zeros((2, 4)), ddof=2)
