"""The pinned solution environment: the Python (with numpy, pandas, scikit-learn) scripts run.

By default it is this process's own virtual environment (the project pins those packages).
Isolating backends bind its directories read-only at the same paths inside the sandbox:
the venv, and the base installation its interpreter links to where that is outside /usr.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class SolutionEnv:
    """An interpreter path and the host directories it needs (mounted read-only, same path)."""

    python: str
    mounts: tuple[str, ...]

    @classmethod
    def current(cls) -> "SolutionEnv":
        """This process's interpreter and installation."""
        return cls.from_python(sys.executable, (sys.prefix, sys.base_prefix))

    @classmethod
    def from_python(cls, python: str, prefixes: tuple[str, ...] = ()) -> "SolutionEnv":
        """An interpreter at `python` (e.g. a venv's bin/python) plus its install prefixes."""
        python = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(python))), os.path.basename(python))
        real = os.path.realpath(python)
        candidates = [*prefixes, os.path.dirname(os.path.dirname(python)),
                      os.path.dirname(os.path.dirname(real))]
        return cls(python, _outermost(os.path.realpath(p) for p in candidates))


def _outermost(paths) -> tuple[str, ...]:
    """Distinct directories outside /usr, dropping any inside another."""
    keep: list[str] = []
    for p in sorted(set(paths), key=len):
        if p in ("/", "") or p == "/usr" or p.startswith("/usr/"):
            continue
        if any(p == k or p.startswith(k + "/") for k in keep):
            continue
        keep.append(p)
    return tuple(sorted(keep))


def check_paths(env: SolutionEnv, reserved: tuple[str, ...], nestable: tuple[str, ...] = ("/tmp",)) -> None:
    """Refuse an environment whose directories collide with the sandbox's own paths.

    A directory inside a `nestable` path (a venv under /tmp, as in a CI checkout there) is
    fine: the sandbox mounts its fresh tmpfs first and binds the environment on top of it."""
    for m in env.mounts:
        for r in reserved:
            inside = m.startswith(r + "/")
            if m == r or r.startswith(m + "/") or (inside and r not in nestable):
                raise ValueError(f"solution environment directory {m} collides with the sandbox path {r}")
