"""The subprocess backend: rlimits and a timeout only. NOT isolated.

The script runs as this process's user in a host work directory (data/ is a symlink to the
task's public data) with an empty environment and rlimits. It can read anything that user
can, including the private answers, and as root RLIMIT_NPROC does not bind: it is for
trusted code (reference solutions, tests) and refuses to start unless forced.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from rollout.sandbox.base import (WRAPPER, ExecResult, Limits, Sandbox, SandboxRefused, read_capped,
                                  read_tail, sandbox_env)
from rollout.sandbox.process import run_with_timeout
from rollout.sandbox.slots import SlotDirs
from rollout.sandbox.solution_env import SolutionEnv

log = logging.getLogger(__name__)


class SubprocessSandbox(Sandbox):
    """A plain child process with rlimits; refuses to run unless `force=True`."""

    name = "subprocess"
    isolated = False

    def __init__(self, solution_env: SolutionEnv | None = None, slot_root: str | None = None, force: bool = False):
        if not force:
            raise SandboxRefused("the subprocess sandbox is not isolated: it refuses untrusted code unless forced "
                                 "(force=True / --force-unisolated); use bwrap or docker")
        log.warning("sandbox 'subprocess' is NOT isolated: scripts run as this user with rlimits only")
        self.env = solution_env or SolutionEnv.current()
        self.dirs = SlotDirs(slot_root)

    def run(self, script: str, data_dir, limits: Limits = Limits(), slot: int = 0) -> ExecResult:
        data_dir = Path(data_dir).resolve()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data directory {data_dir} does not exist")
        slot_dir = self.dirs.reset(slot, script, None)
        work = slot_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        (work / "tmp").mkdir(parents=True)
        (work / "data").symlink_to(data_dir)
        shutil.copy(slot_dir / "solution.py", work / "solution.py")
        fsize = limits.max_file_mb << 20
        argv = limits.prlimit_args() + ["/bin/sh", "-c", WRAPPER, "sh", str(slot_dir / "outbox"), self.env.python]
        code, timed_out, runtime, _ = run_with_timeout(argv, limits.timeout_s, slot_dir / "launcher.log",
                                                    env=sandbox_env(self.env.python, str(work / "tmp")),
                                                    cwd=str(work))
        outbox = slot_dir / "outbox"
        out, n_out = read_tail(outbox / "stdout", limits.tail_bytes)
        err, n_err = read_tail(outbox / "stderr", limits.tail_bytes)
        return ExecResult(self.name, code, timed_out, runtime, out, err, n_out, n_err,
                          read_capped(outbox / "submission.csv", fsize), limits=limits)

    def close(self) -> None:
        self.dirs.close()
