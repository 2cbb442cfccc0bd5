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


def _statuses_of(uid: int):
    """(pid, /proc/<pid>/status fields) of the live (non-zombie) processes whose real uid is `uid`."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid and fields[b"State"].split()[0] not in (b"Z", b"X"):
                yield int(entry.name), fields
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError, IndexError, KeyError):
            continue


def processes_of(uid: int) -> list[int]:
    """Live (non-zombie) pids whose real uid is `uid`.

    Zombies are skipped: they run nothing, and a dead namespace's init can linger as one until
    the host's init reaps it."""
    return [pid for pid, _ in _statuses_of(uid)]


def memory_of(uid: int, tmpfs_dirs: tuple[str, ...] = ()) -> int:
    """Bytes a slot uid holds: anonymous and shared memory of its processes, plus what its tmpfs
    mounts hold (`tmpfs_dirs`, seen through /proc/<pid>/root of one of its processes that is
    inside the sandbox: where the first of them exists; the host has no such directory)."""
    total, pids = 0, []
    for pid, fields in _statuses_of(uid):
        pids.append(pid)
        for key in (b"RssAnon", b"RssShmem"):
            if key in fields:
                total += int(fields[key].split()[0]) << 10
    inside = next((p for p in pids if tmpfs_dirs and os.path.isdir(f"/proc/{p}/root{tmpfs_dirs[0]}")), None)
    for d in tmpfs_dirs if inside is not None else ():
        try:
            st = os.statvfs(f"/proc/{inside}/root{d}")
            total += (st.f_blocks - st.f_bfree) * st.f_frsize
        except OSError:
            continue
    return total


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


SLOT_PREFIX = "ace-jax-sandbox-"
OWNER_LOCK = ".owner.lock"


def sweep_stale_slot_dirs(parent: str | os.PathLike | None = None) -> list[Path]:
    """Remove slot roots under `parent` (the temp dir) whose owner died without cleaning up.

    A live owner holds an flock on the root's `.owner.lock`; a root whose lock can be taken
    belongs to a dead process (a SIGKILL skips cleanup). Roots without the lock file are left."""
    removed = []
    for root in Path(parent or tempfile.gettempdir()).glob(SLOT_PREFIX + "*"):
        try:
            fd = os.open(root / OWNER_LOCK, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


class SlotDirs:
    """Host directories of the slots: `<root>/slot-<n>/{outbox/, solution.py, ...}`.

    A root made here (in the temp dir) is locked by this process and swept by the next one
    to start if this one dies without removing it."""

    def __init__(self, root: str | os.PathLike | None = None):
        self._own = root is None
        self._lock_fd: int | None = None
        if root is None:
            sweep_stale_slot_dirs()
        self.root = Path(tempfile.mkdtemp(prefix=SLOT_PREFIX)) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if self._own:  # locked before it gets the name a sweeper looks for
            self._lock_fd = os.open(self.root / (OWNER_LOCK + ".new"), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            os.rename(self.root / (OWNER_LOCK + ".new"), self.root / OWNER_LOCK)

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
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
