"""The bubblewrap backend: new user, pid, network, ipc, uts and cgroup namespaces.

The sandbox sees /usr, the solution environment and the task's public data read-only, a
size-limited tmpfs as its work directory and /tmp, and three outbox files; nothing else of
the host. rlimits (prlimit) cap CPU time, address space, file size and processes; a
wall-clock timeout kills bwrap, whose death (`--die-with-parent`, pid namespace) kills
everything inside; as root, the slot uid is then swept for survivors.

Run as root, the script's processes belong to the slot's unprivileged uid, so RLIMIT_NPROC
binds. That uid cannot traverse root-only directories (/root/.pyenv, ~/.cache), so bwrap is
started inside a private mount namespace where root first bind-mounts the needed directories
under a traversable slot path ("aliases"), then drops to the slot uid (setpriv) and execs
prlimit + bwrap, which map them back to their original paths.

`--as-pid-1` makes the wrapper shell the namespace's init, which bwrap itself reaps: bwrap's
own init would otherwise outlive bwrap as a zombie until the host's init reaps it, and a
zombie still counts against the slot uid's process limit.

Every run starts under a fresh session keyring (launcher.py), with the seccomp policy of
seccomp.py and RLIMIT_NOFILE. Aggregate limits: a cgroup v2 group per slot (memory.max,
cpu.max, pids.max) where the host delegates one; otherwise, as root, the slot uid's memory
(its processes' anonymous and shared pages plus its tmpfs) is polled and the run killed past
`memory_mb`; the backend says once at start which of these applies.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from rollout.sandbox import seccomp
from rollout.sandbox.base import (OUTBOX_DIR, OUTBOX_FILES, WORK_DIR, WRAPPER, ExecResult, Limits, Sandbox,
                                  SandboxUnavailable, read_capped, read_tail, sandbox_env)
from rollout.sandbox.cgroups import SlotCgroups
from rollout.sandbox.launcher import launcher
from rollout.sandbox.process import run_with_timeout
from rollout.sandbox.slots import (SlotDirs, UidPool, check_readable, check_traversable, is_root, kill_uid,
                                   memory_of)
from rollout.sandbox.solution_env import SolutionEnv, check_paths

log = logging.getLogger(__name__)

# Root-side setup in a private mount namespace: $1 alias dir, then sources up to "--", then the command.
ALIAS_SCRIPT = r"""
set -e
a="$1"; shift
mount -t tmpfs -o size=64k,mode=0755 ace-jax-alias "$a"
i=0
while [ "$1" != "--" ]; do mkdir "$a/$i"; mount --bind "$1" "$a/$i"; i=$((i+1)); shift; done
shift
exec "$@"
"""

REQUIRED_TOOLS = ("bwrap", "prlimit")
ROOT_TOOLS = ("unshare", "setpriv", "mount")


def _missing_tools() -> list[str]:
    tools = REQUIRED_TOOLS + (ROOT_TOOLS if is_root() else ())
    return [t for t in tools if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]


class BwrapSandbox(Sandbox):
    """bubblewrap with rlimits, a per-slot unprivileged uid (as root) and a wall-clock timeout."""

    name = "bwrap"
    isolated = True

    def __init__(self, solution_env: SolutionEnv | None = None, slot_root: str | None = None,
                 uid_base: int | None = None):
        missing = _missing_tools()
        if missing:
            raise SandboxUnavailable(f"bwrap sandbox needs {', '.join(missing)} on PATH "
                                     "(Debian/Ubuntu: apt-get install bubblewrap util-linux)")
        self.env = solution_env or SolutionEnv.current()
        check_paths(self.env, ("/sandbox", "/tmp", "/proc", "/dev"))
        self.dirs = SlotDirs(slot_root)
        self.root_mode = is_root()
        if self.root_mode:
            try:
                check_traversable(self.dirs.root)
            except Exception:
                self.dirs.close()
                raise
        self.uids = UidPool(**({"base": uid_base} if uid_base is not None else {})) if self.root_mode else None
        self._slot_uid: dict[int, int] = {}
        self.cgroups = SlotCgroups()
        self.aggregate = "cgroup" if self.cgroups.available else "uid-memory-poll" if self.root_mode else "none"
        if not self.cgroups.available:
            log.warning("bwrap: no cgroup v2 group per slot (%s); %s", self.cgroups.reason,
                        "aggregate memory is enforced by polling the slot uid's memory, CPU share is not limited"
                        if self.root_mode else "memory, CPU and process limits are per process only")

    def slot_uid(self, slot: int) -> int | None:
        """The unprivileged uid slot `slot` runs as (root mode), claimed on first use."""
        if self.uids is None:
            return None
        if slot not in self._slot_uid:
            self._slot_uid[slot] = self.uids.acquire()
        return self._slot_uid[slot]

    def _bwrap_args(self, slot_dir: Path, sources: dict[str, str], limits: Limits, seccomp_fd: int) -> list[str]:
        args = ["bwrap", "--seccomp", str(seccomp_fd),
                "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--as-pid-1", "--clearenv", "--cap-drop", "ALL",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
                "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
                "--proc", "/proc", "--dev", "/dev",
                "--size", str(16 << 20), "--tmpfs", "/dev/shm",
                "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp",
                "--size", str(limits.work_mb << 20), "--tmpfs", WORK_DIR]
        for mount in self.env.mounts:
            args += ["--ro-bind", sources[mount], mount]
        args += ["--ro-bind", sources["data"], f"{WORK_DIR}/data",
                 "--ro-bind", str(slot_dir / "solution.py"), f"{WORK_DIR}/solution.py"]
        for name in OUTBOX_FILES:
            args += ["--bind", str(slot_dir / "outbox" / name), f"{OUTBOX_DIR}/{name}"]
        args += ["--remount-ro", "/", "--chdir", WORK_DIR]
        for key, value in sandbox_env(self.env.python).items():
            args += ["--setenv", key, value]
        return args + ["/bin/sh", "-c", WRAPPER, "sh", OUTBOX_DIR, self.env.python]

    def command(self, slot_dir: Path, data_dir: Path, limits: Limits, uid: int | None, seccomp_fd: int,
                cgroup_procs: str | None = None) -> list[str]:
        """The full launch command for one run."""
        return launcher(self._command(slot_dir, data_dir, limits, uid, seccomp_fd), cgroup_procs)

    def _command(self, slot_dir: Path, data_dir: Path, limits: Limits, uid: int | None, seccomp_fd: int) -> list[str]:
        external = [*self.env.mounts, str(data_dir)]
        if uid is None:
            sources = dict(zip(self.env.mounts, self.env.mounts), data=str(data_dir))
            return limits.prlimit_args() + self._bwrap_args(slot_dir, sources, limits, seccomp_fd)
        alias = slot_dir / "alias"
        alias.mkdir(exist_ok=True)
        names = [*self.env.mounts, "data"]
        sources = {name: f"{alias}/{i}" for i, name in enumerate(names)}
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                "--inh-caps=-all", "--bounding-set=-all", "--"]
        return (["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", ALIAS_SCRIPT, "sh",
                 str(alias), *external, "--"] + drop + limits.prlimit_args()
                + self._bwrap_args(slot_dir, sources, limits, seccomp_fd))

    def run(self, script: str, data_dir, limits: Limits = Limits(), slot: int = 0) -> ExecResult:
        data_dir = Path(data_dir).resolve()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data directory {data_dir} does not exist")
        uid = self.slot_uid(slot)
        if uid is not None:
            check_readable(data_dir)
        slot_dir = self.dirs.reset(slot, script, uid)
        procs = self.cgroups.prepare(slot, limits) if self.cgroups.available else None
        oom_before = self.cgroups.oom_kills(slot) if procs else 0
        watch = None
        if procs is None and uid is not None:
            cap, tmpfs = limits.memory_mb << 20, (WORK_DIR, "/tmp", "/dev/shm")
            watch = lambda: memory_of(uid, tmpfs) > cap  # noqa: E731
        fd = seccomp.bpf_fd()
        try:
            argv = self.command(slot_dir, data_dir, limits, uid, fd, procs)
            launch = run_with_timeout(argv, limits.timeout_s, slot_dir / "launcher.log", pass_fds=(fd,), watch=watch)
        finally:
            os.close(fd)
            if procs is not None:
                self.cgroups.kill(slot)
            if uid is not None:
                kill_uid(uid)
        oom = launch.tripped or (procs is not None and self.cgroups.oom_kills(slot) > oom_before)
        return self._collect(slot_dir, launch.code, launch.timed_out, launch.runtime_s, limits, oom)

    def _collect(self, slot_dir: Path, code, timed_out, runtime, limits: Limits, oom: bool = False) -> ExecResult:
        outbox = slot_dir / "outbox"
        out, n_out = read_tail(outbox / "stdout", limits.tail_bytes)
        err, n_err = read_tail(outbox / "stderr", limits.tail_bytes)
        launcher, _ = read_tail(slot_dir / "launcher.log", 2000)
        if launcher.strip() and code not in (0, None):
            log.warning("bwrap launcher said: %s", launcher.strip()[-500:])
            err = (err + "\n[sandbox] " + launcher.strip()[-500:]).lstrip()
        return ExecResult(self.name, code, timed_out, runtime, out, err, n_out, n_err,
                          read_capped(outbox / "submission.csv", limits.max_file_mb << 20), oom, limits)

    def close(self) -> None:
        try:
            for uid in self._slot_uid.values():
                kill_uid(uid)
        finally:
            if self.uids is not None:
                self.uids.release_all()
            self._slot_uid.clear()
            self.cgroups.close()
            self.dirs.close()


def probe() -> str | None:
    """None when the bwrap sandbox runs a script here (the real launch path), else why not."""
    missing = _missing_tools()
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        with tempfile.TemporaryDirectory() as tmp, BwrapSandbox() as sandbox:
            os.chmod(tmp, 0o755)
            res = sandbox.run("print('ok')", tmp, Limits(timeout_s=30))
    except Exception as exc:  # any setup failure means: not usable here
        return f"bwrap sandbox failed to start: {exc}"
    if not res.ok or "ok" not in res.stdout_tail:
        return f"bwrap sandbox cannot run scripts here: {(res.failure_reason() or '')} {res.stderr_tail[-300:]}".strip()
    return None
