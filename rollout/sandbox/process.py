"""Running a launcher process with a wall-clock timeout, killing its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def run_with_timeout(argv: list[str], timeout_s: float, log_path: Path, *, env: dict | None = None,
                     cwd: str | None = None, pass_fds: tuple[int, ...] = ()) -> tuple[int | None, bool, float]:
    """Run `argv` in a new session; on timeout SIGKILL its process group.

    Returns (exit status or None when killed, timed out, wall seconds). The launcher's own
    output (e.g. a bwrap setup error) goes to `log_path`.
    """
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env if env is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                cwd=cwd, start_new_session=True, pass_fds=pass_fds)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    runtime = time.monotonic() - start
    code = proc.returncode
    return (None if timed_out or code < 0 else code), timed_out, runtime
