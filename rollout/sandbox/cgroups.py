"""cgroup v2 groups, one per slot: memory.max, cpu.max and pids.max over everything a run starts.

rlimits bind per process; a group bounds the sum (children, tmpfs pages included). The groups
live under `<this process's cgroup>/ace-jax-sandbox-<pid>/slot-<n>` when the host delegates
the memory, cpu and pids controllers there; otherwise `SlotCgroups.reason` says why not.
A launcher joins the slot's group by writing its pid to the `procs` path before it execs.
"""

from __future__ import annotations

import os
from pathlib import Path

from rollout.sandbox.base import Limits

CONTROLLERS = ("memory", "cpu", "pids")
PREFIX = "ace-jax-sandbox-"


def _cgroup2_mount() -> Path | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    return None


def own_cgroup() -> tuple[Path | None, str | None]:
    """This process's cgroup v2 directory, or None and the reason there is none usable."""
    mount = _cgroup2_mount()
    if mount is None:
        return None, "no cgroup v2 hierarchy is mounted"
    with open("/proc/self/cgroup") as f:
        path = next((ln.strip()[3:] for ln in f if ln.startswith("0::")), None)
    if path is None:
        return None, "this process is in no cgroup v2 group"
    base = mount / path.lstrip("/")
    available = (base / "cgroup.controllers").read_text().split() if (base / "cgroup.controllers").exists() else []
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        return None, f"the cgroup v2 group {base} lacks the {', '.join(missing)} controller(s)"
    if not os.access(base, os.W_OK):
        return None, f"the cgroup v2 group {base} is not writable"
    return base, None


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class SlotCgroups:
    """Per-slot cgroup v2 groups when the host allows them; `available` / `reason` say."""

    def __init__(self, base: Path | None = None):
        """Groups under `base` (default: this process's own cgroup v2 group, when usable)."""
        self.parent: Path | None = None
        self.reason: str | None = None
        if base is None:
            base, self.reason = own_cgroup()
        if base is None:
            return
        enable = " ".join(f"+{c}" for c in CONTROLLERS)
        parent = base / f"{PREFIX}{os.getpid()}"
        try:
            _sweep_dead_groups(base)
            _write(base / "cgroup.subtree_control", enable)
            parent.mkdir(exist_ok=True)
            _write(parent / "cgroup.subtree_control", enable)
        except OSError as exc:
            self.reason = f"cannot delegate {', '.join(CONTROLLERS)} to a child of {base} ({exc.strerror})"
            if parent.exists():
                _remove(parent)
            return
        self.parent = parent

    @property
    def available(self) -> bool:
        return self.parent is not None

    def group(self, slot: int) -> Path:
        assert self.parent is not None, self.reason
        return self.parent / f"slot-{slot}"

    def prepare(self, slot: int, limits: Limits) -> str:
        """Create / reset slot `slot`'s group with `limits`; return its cgroup.procs path."""
        group = self.group(slot)
        group.mkdir(exist_ok=True)
        _write(group / "memory.max", str(limits.memory_mb << 20))
        if (group / "memory.swap.max").exists():
            _write(group / "memory.swap.max", "0")
        _write(group / "cpu.max", f"{max(1000, int(limits.cpus * 100_000))} 100000")
        _write(group / "pids.max", str(limits.max_procs))
        return str(group / "cgroup.procs")

    def oom_kills(self, slot: int) -> int:
        """How many processes of the slot's group the kernel OOM-killed so far."""
        try:
            events = (self.group(slot) / "memory.events").read_text().split()
        except FileNotFoundError:
            return 0
        return int(dict(zip(events[::2], events[1::2])).get("oom_kill", 0))

    def kill(self, slot: int) -> None:
        """SIGKILL whatever is left in the slot's group."""
        kill_file = self.group(slot) / "cgroup.kill"
        if kill_file.exists():
            _write(kill_file, "1")

    def close(self) -> None:
        if self.parent is not None:
            _remove(self.parent)
            self.parent = None


def _remove(parent: Path) -> None:
    for group in parent.glob("slot-*"):
        try:
            if (group / "cgroup.kill").exists():
                _write(group / "cgroup.kill", "1")
            group.rmdir()
        except OSError:
            pass
    try:
        parent.rmdir()
    except OSError:
        pass


def _sweep_dead_groups(base: Path) -> None:
    """Remove groups left by sandbox hosts that died (their pid is gone)."""
    for parent in base.glob(PREFIX + "*"):
        pid = parent.name[len(PREFIX):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove(parent)
