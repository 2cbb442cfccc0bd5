"""The AceGRPO curriculum: Evolving Data Buffer and Learnability-Potential sampler (NumPy only)."""

from .buffer import FIELDS, OPERATORS, REJECT_REASONS, EvolvingBuffer, content_hash
from .config import CurriculumConfig
from .io import load_state, save_state
from .metrics import MetricsLog, frontier_fraction, plot_metrics, step_metrics
from .payload import PayloadStore
from .potentials import POTENTIALS, LPInputs, Potential, get_potential, register_potential
from .sampler import LearnabilitySampler

__all__ = [
    "CurriculumConfig",
    "EvolvingBuffer",
    "FIELDS",
    "LPInputs",
    "LearnabilitySampler",
    "MetricsLog",
    "OPERATORS",
    "POTENTIALS",
    "PayloadStore",
    "Potential",
    "REJECT_REASONS",
    "content_hash",
    "frontier_fraction",
    "get_potential",
    "load_state",
    "plot_metrics",
    "register_potential",
    "save_state",
    "step_metrics",
]
