"""The docker backend (docker SDK): a locally built image, no network, cgroup limits, non-root.

Per run: a detached container from the local image with the host's /usr and the solution
environment bind-mounted read-only, the task's public data read-only at data/, a read-only
root, size-limited tmpfs work dir and /tmp, memory = memory+swap cgroup limit (an OOM kill
is reported as such), pids and CPU limits,
all capabilities dropped, no-new-privileges, the slot's unprivileged uid, rlimits, stdout and
stderr written to size-capped outbox files (the log driver is off), the seccomp policy of
seccomp.py (runc gives each container a fresh session keyring). Wait with a timeout, kill on
expiry (a container that exits just then is not an error), always remove.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from rollout.sandbox import seccomp
from rollout.sandbox.base import (OUTBOX_DIR, OUTBOX_FILES, WORK_DIR, WRAPPER, ExecResult, Limits, Sandbox,
                                  SandboxError, SandboxUnavailable, read_capped, read_tail, sandbox_env)
from rollout.sandbox.image import ensure_image
from rollout.sandbox.slots import UID_BASE, SlotDirs, UidPool, check_readable, is_root, kill_uid
from rollout.sandbox.solution_env import SolutionEnv, check_paths

log = logging.getLogger(__name__)
LABEL = "ace-jax.sandbox"


def connect(timeout_s: float = 30.0):
    """A docker client for the local engine, or SandboxUnavailable saying why not."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a project dependency
        raise SandboxUnavailable(f"the docker Python SDK is not installed: {exc}") from None
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except Exception as exc:
        raise SandboxUnavailable(f"no docker engine answers ({exc}); start dockerd "
                                 "(Debian/Ubuntu: apt-get install docker.io; dockerd &)") from None
    return client


class DockerSandbox(Sandbox):
    """One container per run, hardened; see the module docstring."""

    name = "docker"
    isolated = True

    def __init__(self, solution_env: SolutionEnv | None = None, slot_root: str | None = None,
                 uid_base: int | None = None):
        self.env = solution_env or SolutionEnv.current()
        check_paths(self.env, ("/sandbox", "/tmp", "/proc", "/dev", "/etc", "/sys"))
        self._clients: dict[int, object] = {}
        self._lock = threading.Lock()
        client = self._client(-1)
        self.image = ensure_image(client)
        self.dirs = SlotDirs(slot_root)
        self.root_mode = is_root()
        self.uids = UidPool(**({"base": uid_base} if uid_base is not None else {})) if self.root_mode else None
        self.uid_base = uid_base or UID_BASE
        self._slot_uid: dict[int, int] = {}
        self.seccomp_profile = seccomp.docker_profile()

    def _client(self, slot: int):
        """One docker client per slot (requests sessions are not shared across threads)."""
        with self._lock:
            if slot not in self._clients:
                self._clients[slot] = connect()
            return self._clients[slot]

    def slot_uid(self, slot: int) -> int:
        if slot not in self._slot_uid:
            self._slot_uid[slot] = self.uids.acquire() if self.uids is not None else self.uid_base + slot
        return self._slot_uid[slot]

    def _mounts(self, slot_dir: Path, data_dir: Path):
        from docker.types import Mount

        mounts = [Mount("/usr", "/usr", type="bind", read_only=True)]
        mounts += [Mount(m, m, type="bind", read_only=True) for m in self.env.mounts]
        mounts += [Mount(f"{WORK_DIR}/data", str(data_dir), type="bind", read_only=True),
                   Mount(f"{WORK_DIR}/solution.py", str(slot_dir / "solution.py"), type="bind", read_only=True)]
        mounts += [Mount(f"{OUTBOX_DIR}/{n}", str(slot_dir / "outbox" / n), type="bind") for n in OUTBOX_FILES]
        return mounts

    def _run_kwargs(self, slot_dir: Path, data_dir: Path, limits: Limits, uid: int) -> dict:
        from docker.types import LogConfig, Ulimit

        fsize = limits.max_file_mb << 20
        # No RLIMIT_AS here: runc's own init (Go) runs under the container's rlimits and fails to
        # set up seccomp under a small address-space limit. Memory is capped by the cgroup.
        ulimits = [Ulimit(name="fsize", soft=fsize, hard=fsize),
                   Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds),
                   Ulimit(name="nproc", soft=limits.max_procs, hard=limits.max_procs),
                   Ulimit(name="nofile", soft=limits.max_open_files, hard=limits.max_open_files),
                   Ulimit(name="core", soft=0, hard=0)]
        return dict(
            image=self.image, command=["/bin/sh", "-c", WRAPPER, "sh", OUTBOX_DIR, self.env.python],
            user=f"{uid}:{uid}", working_dir=WORK_DIR, environment=sandbox_env(self.env.python),
            hostname="sandbox", network_mode="none", read_only=True, ipc_mode="private", shm_size="16m",
            tmpfs={"/tmp": f"size={limits.tmp_mb}m,mode=1777", WORK_DIR: f"size={limits.work_mb}m,mode=1777"},
            mounts=self._mounts(slot_dir, data_dir), mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m", pids_limit=limits.max_procs,
            nano_cpus=int(limits.cpus * 1e9), cap_drop=["ALL"],
            security_opt=["no-new-privileges", f"seccomp={self.seccomp_profile}"],
            ulimits=ulimits, log_config=LogConfig(type="none"), labels={LABEL: "1"},
        )

    def run(self, script: str, data_dir, limits: Limits = Limits(), slot: int = 0) -> ExecResult:
        import requests

        data_dir = Path(data_dir).resolve()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data directory {data_dir} does not exist")
        uid = self.slot_uid(slot)
        check_readable(data_dir)
        slot_dir = self.dirs.reset(slot, script, uid if self.root_mode else None)
        client = self._client(slot)
        start = time.monotonic()
        container = None
        code, timed_out, oom = None, False, False
        try:
            container = client.containers.create(**self._run_kwargs(slot_dir, data_dir, limits, uid))
            try:
                container.start()
            except Exception as exc:
                raise SandboxError(f"docker could not start the sandbox container: {exc}") from exc
            remaining = max(0.1, limits.timeout_s - (time.monotonic() - start))
            try:
                code = int(container.wait(timeout=remaining)["StatusCode"])
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                timed_out = True
                kill_container(container)
            container.reload()
            oom = bool(container.attrs["State"].get("OOMKilled"))
        except Exception as exc:
            if container is None:
                raise SandboxError(f"docker could not create the sandbox container: {exc}") from exc
            raise
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except Exception as exc:  # the container must not outlive the run
                    log.error("could not remove sandbox container %s: %s", container.id[:12], exc)
            if self.root_mode:
                kill_uid(uid)
        runtime = time.monotonic() - start
        outbox = slot_dir / "outbox"
        out, n_out = read_tail(outbox / "stdout", limits.tail_bytes)
        err, n_err = read_tail(outbox / "stderr", limits.tail_bytes)
        return ExecResult(self.name, None if timed_out else code, timed_out, runtime, out, err, n_out, n_err,
                          read_capped(outbox / "submission.csv", limits.max_file_mb << 20), oom, limits)

    def close(self) -> None:
        try:
            for uid in self._slot_uid.values():
                if self.root_mode:
                    kill_uid(uid)
        finally:
            if self.uids is not None:
                self.uids.release_all()
            self._slot_uid.clear()
            for client in self._clients.values():
                try:
                    client.close()
                except Exception:  # a closed connection is fine here
                    pass
            self._clients.clear()
            self.dirs.close()


def kill_container(container) -> None:
    """SIGKILL a container; one that already exited (the timeout raced its exit) is fine."""
    import docker.errors

    try:
        container.kill()
    except docker.errors.APIError as exc:
        container.reload()
        if container.status == "running":
            raise SandboxError(f"docker could not kill sandbox container {container.id[:12]}: {exc}") from exc


def leftover_containers(client) -> list:
    """Sandbox containers still present (there should be none after runs end)."""
    return client.containers.list(all=True, filters={"label": LABEL})


def probe() -> str | None:
    """None when a docker engine answers, else why not."""
    try:
        connect(5).close()
    except SandboxUnavailable as exc:
        return str(exc)
    return None

