"""The first process of a bwrap run: a fresh session keyring, the slot's cgroup, then exec.

The session keyring is inherited across exec and setuid, and its possessor may read and
write it: without a fresh one a script could read the launcher's keys and plant its own
(seccomp denies the keyring calls as well; this removes what they could reach).
"""

from __future__ import annotations

import sys

from rollout.sandbox.seccomp import SYSCALLS, machine

# argv: keyctl syscall number, cgroup.procs path or "", then the command.
LAUNCH = r"""
import ctypes, errno, os, sys
nr, procs = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
if libc.syscall(nr, 1, None) < 0 and ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM, errno.EACCES):
    sys.exit("sandbox launcher: cannot join a new session keyring: " + os.strerror(ctypes.get_errno()))
if procs:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
os.execvp(sys.argv[3], sys.argv[3:])
"""


def launcher(argv: list[str], cgroup_procs: str | None = None) -> list[str]:
    """`argv` run under a new anonymous session keyring (KEYCTL_JOIN_SESSION_KEYRING), in a cgroup."""
    return [sys.executable, "-I", "-S", "-c", LAUNCH, str(SYSCALLS[machine()]["keyctl"]), cgroup_procs or "", *argv]
