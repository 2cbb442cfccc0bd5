"""Choosing a sandbox backend by name; `auto` takes the strongest available and logs which."""

from __future__ import annotations

import logging

from rollout.sandbox.base import Sandbox, SandboxRefused

log = logging.getLogger(__name__)

BACKENDS = ("bwrap", "docker", "subprocess")
CHOICES = ("auto",) + BACKENDS


def probe(name: str) -> str | None:
    """None when backend `name` can run here, else the reason it cannot."""
    if name == "bwrap":
        from rollout.sandbox import bwrap
        return bwrap.probe()
    if name == "docker":
        from rollout.sandbox import docker_backend
        return docker_backend.probe()
    if name == "subprocess":
        return None
    raise ValueError(f"unknown sandbox {name!r}; choose one of {', '.join(CHOICES)}")


def make_sandbox(name: str = "auto", *, force_unisolated: bool = False, **kwargs) -> Sandbox:
    """Build backend `name` (`auto`: bwrap, else docker, else subprocess when forced)."""
    if name not in CHOICES:
        raise ValueError(f"unknown sandbox {name!r}; choose one of {', '.join(CHOICES)}")
    if name == "auto":
        reasons = {}
        for candidate in BACKENDS[:2]:
            reason = probe(candidate)
            if reason is None:
                log.info("sandbox auto: using %s (isolated)", candidate)
                return make_sandbox(candidate, **kwargs)
            reasons[candidate] = reason
        summary = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        if not force_unisolated:
            raise SandboxRefused(f"no isolating sandbox is available ({summary}); the subprocess sandbox "
                                 "is not isolated and needs force_unisolated / --force-unisolated")
        log.warning("sandbox auto: no isolating backend (%s); using subprocess (NOT isolated)", summary)
        name = "subprocess"
    if name == "bwrap":
        from rollout.sandbox.bwrap import BwrapSandbox
        return BwrapSandbox(**kwargs)
    if name == "docker":
        from rollout.sandbox.docker_backend import DockerSandbox
        return DockerSandbox(**kwargs)
    from rollout.sandbox.subprocess_backend import SubprocessSandbox
    return SubprocessSandbox(force=force_unisolated, **kwargs)

