"""Learnability potentials by name (acegrpo.md, "Learnability Potential and sampling").

A potential maps an entry's statistics to LP in [0, ~1.1]. Each one also states a fixed upper
bound on its LP, used as the softmax reference: ``exp((LP - bound) / tau)`` never overflows and
the shift cancels in the softmax, so no running maximum over the buffer is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .config import CurriculumConfig


class LPInputs(NamedTuple):
    """Per-entry statistics a potential may read (arrays of one length)."""

    a: np.ndarray  # discounted success count
    b: np.ndarray  # discounted failure count
    q: np.ndarray  # hidden normalized score of the state, in [0, 1]
    visits: np.ndarray  # recorded groups
    ema_std: np.ndarray  # EMA of the group reward std


@dataclass(frozen=True)
class Potential:
    name: str
    fn: Callable[[LPInputs, "CurriculumConfig"], np.ndarray]
    bound: Callable[["CurriculumConfig"], float]  # LP <= bound for rewards in [0, 1]

    def __call__(self, x: LPInputs, cfg: "CurriculumConfig") -> np.ndarray:
        return np.asarray(self.fn(x, cfg), dtype=np.float64)


POTENTIALS: dict[str, Potential] = {}


def register_potential(name: str, bound: Callable[["CurriculumConfig"], float]):
    """Decorator: add ``fn(inputs, cfg) -> LP`` to the registry under ``name``."""

    def deco(fn):
        if name in POTENTIALS:
            raise ValueError(f"potential {name!r} is already registered")
        POTENTIALS[name] = Potential(name, fn, bound)
        return fn

    return deco


def get_potential(name: str) -> Potential:
    if name not in POTENTIALS:
        raise ValueError(f"potential={name!r} is not allowed; allowed: {sorted(POTENTIALS)}")
    return POTENTIALS[name]


@register_potential("frontier", bound=lambda cfg: 1.0 + cfg.c)
def frontier(x: LPInputs, cfg: "CurriculumConfig") -> np.ndarray:
    """E[4p(1-p)] under Beta(a, b) = 4ab / ((a+b)(a+b+1)), times (1-q)^beta, plus c/sqrt(1+n)."""
    a, b = np.asarray(x.a, np.float64), np.asarray(x.b, np.float64)
    s = a + b
    headroom = np.clip(1.0 - np.asarray(x.q, np.float64), 0.0, 1.0) ** cfg.beta
    bonus = cfg.c / np.sqrt(1.0 + np.asarray(x.visits, np.float64))
    return 4.0 * a * b / (s * (s + 1.0)) * headroom + bonus


@register_potential("variance", bound=lambda cfg: 1.0)
def variance(x: LPInputs, cfg: "CurriculumConfig") -> np.ndarray:
    """EMA of the group reward std (ExIt-style)."""
    return np.asarray(x.ema_std, np.float64)


@register_potential("p1mp", bound=lambda cfg: 1.0)
def p1mp(x: LPInputs, cfg: "CurriculumConfig") -> np.ndarray:
    """4 p (1 - p) with p = a / (a + b)."""
    a, b = np.asarray(x.a, np.float64), np.asarray(x.b, np.float64)
    p = a / (a + b)
    return 4.0 * p * (1.0 - p)


@register_potential("uniform", bound=lambda cfg: 1.0)
def uniform(x: LPInputs, cfg: "CurriculumConfig") -> np.ndarray:
    """LP = 1 for every entry (the ablation baseline)."""
    return np.ones(np.shape(x.a), np.float64)
