"""Running a launcher process with a wall-clock timeout, killing its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple


class Launch(NamedTuple):
    code: int | None  # exit status, None when killed by us
    timed_out: bool
    runtime_s: float
    tripped: bool = False  # `watch` asked for the kill


def run_with_timeout(argv: list[str], timeout_s: float, log_path: Path, *, env: dict | None = None,
                     cwd: str | None = None, pass_fds: tuple[int, ...] = (),
                     watch: Callable[[], bool] | None = None, poll_s: float = 0.1) -> Launch:
    """Run `argv` in a new session; on timeout, or when `watch()` turns true (polled every
    `poll_s`), SIGKILL its process group. The launcher's own output (e.g. a bwrap setup error)
    goes to `log_path`.
    """
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env if env is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                cwd=cwd, start_new_session=True, pass_fds=pass_fds)
        timed_out = tripped = False
        deadline = start + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    proc.wait(timeout=max(0.0, min(left, poll_s if watch else left)))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
                    if watch is not None and watch():
                        tripped = True
                        break
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    runtime = time.monotonic() - start
    code = proc.returncode
    return Launch(None if timed_out or tripped or code < 0 else code, timed_out, runtime, tripped)
