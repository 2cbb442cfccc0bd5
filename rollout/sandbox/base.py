"""The sandbox interface, its limits and result type, and what every backend shares.

Inside every backend the script runs as `solution.py` in a writable work directory with the
task's public data at `data/` (read-only); it must write `submission.csv` there. A small
shell wrapper runs it with stdout/stderr redirected to size-capped files in an "outbox"
(RLIMIT_FSIZE caps every file), then copies `submission.csv` into the outbox, so the host
reads back only a few files of bounded size and never follows the script's symlinks.
"""

from __future__ import annotations

import abc
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

WORK_DIR = "/sandbox/work"
OUTBOX_DIR = "/sandbox/outbox"
OUTBOX_FILES = ("stdout", "stderr", "submission.csv")

# $1: outbox directory, $2: python interpreter. Exit status: the script's (128 + signal if killed).
WRAPPER = r"""
out="$1"; py="$2"
"$py" solution.py >"$out/stdout" 2>"$out/stderr" </dev/null
rc=$?
if [ -f submission.csv ]; then cat submission.csv >"$out/submission.csv" 2>/dev/null; fi
exit $rc
"""

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "LOKY_MAX_CPU_COUNT")


class SandboxError(RuntimeError):
    """A sandbox failed to run (a setup problem, not the script's fault)."""


class SandboxUnavailable(SandboxError):
    """The backend cannot run on this machine; the message says what is missing."""


class SandboxRefused(SandboxError):
    """The backend is not isolated and was not forced to run untrusted code."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution."""

    timeout_s: float = 60.0  # wall clock, everything included
    cpu_s: int | None = None  # RLIMIT_CPU; default: the timeout rounded up, plus one
    memory_mb: int = 4096  # RLIMIT_AS (and the cgroup memory limit under docker)
    max_procs: int = 64  # RLIMIT_NPROC per slot uid (and the pids limit under docker)
    max_file_mb: int = 64  # RLIMIT_FSIZE: any file written, stdout and stderr included
    max_open_files: int = 1024  # RLIMIT_NOFILE per process
    work_mb: int = 512  # size of the writable work directory (a tmpfs)
    tmp_mb: int = 64  # size of /tmp
    cpus: float = 1.0  # CPU share under docker
    tail_bytes: int = 8000  # how much of the end of stdout / stderr comes back

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else int(self.timeout_s) + 2

    def prlimit_args(self) -> list[str]:
        """`prlimit` setting this run's rlimits on the command that follows."""
        return ["prlimit", f"--cpu={self.cpu_seconds}", f"--as={self.memory_mb << 20}",
                f"--fsize={self.max_file_mb << 20}", f"--nproc={self.max_procs}",
                f"--nofile={self.max_open_files}", "--core=0", "--"]


@dataclass
class ExecResult:
    """What one execution did; the submission's bytes are graded by the caller."""

    sandbox: str
    exit_code: int | None
    timed_out: bool
    runtime_s: float
    stdout_tail: str = ""
    stderr_tail: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    submission: bytes | None = None
    oom_killed: bool = False
    limits: Limits = field(default_factory=Limits)

    @property
    def signal(self) -> int | None:
        """The signal that killed the script, from the shell's 128+N convention."""
        if self.exit_code is not None and 128 < self.exit_code < 128 + 65:
            return self.exit_code - 128
        return None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def failure_reason(self) -> str | None:
        """Why the run counts as crashed, or None when the script exited normally."""
        lim = self.limits
        if self.timed_out:
            return f"timeout: killed after {lim.timeout_s:g} s wall clock"
        if self.oom_killed:
            return f"out of memory: killed at the {lim.memory_mb} MB memory limit"
        sig = self.signal
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and self.runtime_s >= lim.cpu_seconds):
            return f"cpu time limit exceeded ({lim.cpu_seconds} s)"
        cap = lim.max_file_mb << 20
        if sig == signal.SIGXFSZ or max(self.stdout_bytes, self.stderr_bytes) >= cap \
                or "[Errno 27] File too large" in self.stderr_tail:
            return f"file size limit exceeded: a file or stdout/stderr grew past {lim.max_file_mb} MB"
        if "MemoryError" in self.stderr_tail:
            return f"out of memory: MemoryError at the {lim.memory_mb} MB memory limit"
        if sig is not None:
            return f"killed by signal {signal.Signals(sig).name}"
        if self.exit_code not in (0, None):
            last = [ln for ln in self.stderr_tail.strip().splitlines() if ln.strip()]
            return f"crashed: exit code {self.exit_code}" + (f": {last[-1][:200]}" if last else "")
        if self.exit_code is None:
            return "the sandbox did not report an exit status"
        return None

    def to_dict(self) -> dict:
        return {"sandbox": self.sandbox, "exit_code": self.exit_code, "timed_out": self.timed_out,
                "oom_killed": self.oom_killed, "runtime_s": round(self.runtime_s, 4),
                "stdout_tail": self.stdout_tail, "stderr_tail": self.stderr_tail,
                "stdout_bytes": self.stdout_bytes, "stderr_bytes": self.stderr_bytes}


def sandbox_env(python: str, home: str = "/tmp") -> dict[str, str]:
    """The whole environment a script sees: nothing from the host, single-threaded BLAS."""
    env = {
        "PATH": f"{os.path.dirname(python)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
        "MPLBACKEND": "Agg", "MPLCONFIGDIR": home, "JOBLIB_MULTIPROCESSING": "0",
    }
    env.update({v: "1" for v in THREAD_VARS})
    return env


def read_tail(path: Path, n: int) -> tuple[str, int]:
    """The last `n` bytes of a file (decoded leniently) and its full size."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - n))
            return f.read(n).decode("utf-8", errors="replace"), size
    except FileNotFoundError:
        return "", 0


def read_capped(path: Path, max_bytes: int) -> bytes | None:
    """A file's bytes, or None when absent, empty or larger than `max_bytes`."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    if not data or len(data) > max_bytes:
        return None
    return data


class Sandbox(abc.ABC):
    """Runs one script against one public data directory, in a numbered worker slot."""

    name: str = "base"
    isolated: bool = False

    @abc.abstractmethod
    def run(self, script: str, data_dir: str | os.PathLike, limits: Limits = Limits(), slot: int = 0) -> ExecResult:
        """Run `script` with `data_dir` mounted read-only at `data/`; block until it ends."""

    def close(self) -> None:
        """Release the backend's resources (slot directories, uids, clients)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
