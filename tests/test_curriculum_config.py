"""CurriculumConfig: spec defaults, validation naming the key and the allowed values."""

import dataclasses

import pytest

from ace_jax.curriculum import POTENTIALS, CurriculumConfig


def test_defaults_are_the_spec_values():
    c = CurriculumConfig()
    spec = dict(capacity=4096, max_depth=8, max_children=4, discount=0.9, prior_a=1.0,
                prior_b=1.0, child_pseudo_counts=2.0, potential="frontier", beta=0.5, c=0.1,
                tau=0.25, eps=0.05, root_mix=0.25, cooldown_groups=3, cooldown_base=20,
                std_eps=1e-6)
    assert {k: getattr(c, k) for k in spec} == spec
    assert set(POTENTIALS) == {"frontier", "variance", "p1mp", "uniform"}


def test_from_dict_round_trip_and_coercion():
    c = CurriculumConfig.from_dict({"tau": "0.5", "capacity": "128", "eps": 0,
                                    "potential": "uniform"})
    assert (c.tau, c.capacity, c.eps, c.potential) == (0.5, 128, 0.0, "uniform")
    assert isinstance(c.eps, float)
    assert CurriculumConfig.from_dict(c.to_dict()) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.tau = 1.0  # type: ignore[misc]


def test_unknown_key_names_it_and_the_allowed_keys():
    with pytest.raises(ValueError,
                       match=r"unknown CurriculumConfig key\(s\) \['temperature'\].*'tau'"):
        CurriculumConfig.from_dict({"temperature": 0.3})


@pytest.mark.parametrize("key, value, allowed", [
    ("potential", "entropy", "['frontier', 'p1mp', 'uniform', 'variance']"),
    ("tau", 0.0, "(0.0, inf)"),
    ("eps", 1.5, "[0.0, 1.0]"),
    ("root_mix", -0.1, "[0.0, 1.0]"),
    ("discount", 0.0, "(0.0, 1.0]"),
    ("capacity", 0, "[1, inf)"),
    ("capacity", 2.5, "[1, inf)"),
    ("max_children", True, "[0, 30000]"),
    ("std_ddof", 2, "0, 1"),
    ("cooldown_groups", 0, "[1, 100]"),
    ("child_pseudo_counts", float("nan"), "(0.0, inf)"),
    ("tau", "warm", "float"),
])
def test_bad_values_name_the_key_and_allowed_values(key, value, allowed):
    with pytest.raises(ValueError) as e:
        CurriculumConfig.from_dict({key: value})
    assert key in str(e.value) and allowed in str(e.value)
