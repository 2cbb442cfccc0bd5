"""Per-slot host state: a directory, an unprivileged uid, and killing what a uid left running.

As root, RLIMIT_NPROC does not bind, so every worker slot runs its scripts as its own
unprivileged uid (default 60000 + n). A uid is claimed host-wide with an flock on
/run/ace-jax-sandbox-uids/<uid>.lock (/tmp when /run is not writable), so two pools never share one (a shared uid would pool
the process limit, and the sweep after each run kills every process of the slot's uid).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from rollout.sandbox.base import OUTBOX_FILES, SandboxError

UID_BASE = 60000
UID_COUNT = 1000
# /run (root-only, not swept by /tmp cleaners) when we can write there.
LOCK_DIR = (Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())) / "ace-jax-sandbox-uids"


def is_root() -> bool:
    return os.geteuid() == 0


class UidPool:
    """Claims free unprivileged uids, one per slot, for the life of this process."""

    def __init__(self, base: int = UID_BASE, count: int = UID_COUNT):
        self.base, self.count = base, count
        self._held: dict[int, int] = {}  # uid -> lock fd
        self._lock = threading.Lock()

    def acquire(self) -> int:
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        with self._lock:
            for uid in range(self.base, self.base + self.count):
                if uid in self._held:
                    continue
                fd = os.open(LOCK_DIR / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self._held[uid] = fd
                return uid
        raise SandboxError(f"no free sandbox uid in [{self.base}, {self.base + self.count})")

    def release(self, uid: int) -> None:
        with self._lock:
            fd = self._held.pop(uid, None)
        if fd is not None:
            os.close(fd)

    def release_all(self) -> None:
        for uid in list(self._held):
            self.release(uid)


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) pids whose real uid is `uid`.

    Zombies are skipped: they run nothing, and a dead namespace's init can linger as one until
    the host's init reaps it."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                state = b""
                for line in f:
                    if line.startswith(b"State:"):
                        state = line.split()[1]
                    elif line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid and state not in (b"Z", b"X"):
                            pids.append(int(entry.name))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError):
            continue
    return pids


def kill_uid(uid: int, timeout_s: float = 5.0) -> int:
    """SIGKILL every process of a dedicated slot uid until none is left; return how many were seen."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        pids = processes_of(uid)
        if not pids:
            return len(seen)
        for pid in pids:
            seen.add(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise SandboxError(f"processes of sandbox uid {uid} survive SIGKILL: {pids[:10]}")
        time.sleep(0.01)


def check_traversable(path: Path) -> None:
    """Every directory above `path` must let other uids through (o+x): the slot uid reaches it."""
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & 0o001:
            raise SandboxError(f"{parent} is not traversable by other users, so the sandbox uid cannot reach "
                               f"{path}; put the slot directory elsewhere (slot_root=...)")


def check_readable(data_dir: Path) -> None:
    """Scripts run as an unprivileged uid: the data directory and its files must be world-readable."""
    entries = [data_dir, *data_dir.iterdir()]
    for path in entries:
        mode = path.stat().st_mode
        need = 0o005 if path.is_dir() else 0o004
        if mode & need != need:
            raise SandboxError(f"{path} is not readable by the sandbox's unprivileged uid "
                               f"(mode {oct(mode & 0o777)}); make the task data world-readable (chmod -R o+rX)")


class SlotDirs:
    """Host directories of the slots: `<root>/slot-<n>/{outbox/, solution.py, ...}`."""

    def __init__(self, root: str | os.PathLike | None = None):
        self._own = root is None
        self.root = Path(tempfile.mkdtemp(prefix="ace-jax-sandbox-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)

    def slot(self, n: int) -> Path:
        path = self.root / f"slot-{n}"
        if not self.root.is_dir():  # removed from outside (a /tmp cleaner): recreate it
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o755)
        path.mkdir(mode=0o755, exist_ok=True)
        return path

    def reset(self, n: int, script: str, owner: int | None) -> Path:
        """Fresh empty outbox files (owned by the slot uid) and the script; returns the slot dir."""
        path = self.slot(n)
        outbox = path / "outbox"
        shutil.rmtree(outbox, ignore_errors=True)
        outbox.mkdir(mode=0o755)
        for name in OUTBOX_FILES:
            f = outbox / name
            f.touch(mode=0o600)
            if owner is not None:
                os.chown(f, owner, owner)
            else:
                os.chmod(f, 0o666)
        (path / "solution.py").write_text(script)
        os.chmod(path / "solution.py", 0o644)
        return path

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.root, ignore_errors=True)
