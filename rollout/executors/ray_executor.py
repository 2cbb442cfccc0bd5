"""The `ray` executor: sandbox actors on a Ray cluster, with the grading kept on the trainer.

Each actor builds the same sandbox backend on its host and runs scripts in its own slots. The
trainer's side is a WorkerPool over a `RemoteSandbox`: `fn(sandbox, slot, item)` runs in the
trainer's process (parsing, grading against the private answers, the reward) and only
`sandbox.run(script, public_dir, limits)` goes to an actor, so the answers and the hidden
score never leave the trusted side.

A public data directory is packed and put into the object store once, keyed by its content
hash, and unpacked once per host (the actors of a host share `<tmp>/ace-jax-ray-data/<hash>`).
A failed actor or host (the actor died, its node went away, its sandbox could not start) is
retried on the next actor and counted in `retries`; after `max_attempts` the error
propagates, so a failure never becomes a reward.

Attach to a running cluster with `address="auto"` (a node of it), `"ray://<head>:10001"`, or
RAY_ADDRESS; with none, a local cluster is started.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from rollout.executors.base import Executor
from rollout.sandbox.base import ExecResult, Limits, Sandbox, SandboxError
from rollout.sandbox.pool import WorkerPool

T = TypeVar("T")
RAY_MISSING = ("env.executor=ray needs Ray, the optional 'ray' extra: pip install 'ace-jax[ray]' "
               "(or pip install ray)")


def import_ray():
    """The ray module, or ImportError saying how to install the extra."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{RAY_MISSING}; importing it failed: {exc}") from None
    return ray


def _files(data_dir: Path) -> list[Path]:
    files = []
    for path in sorted(data_dir.rglob("*")):
        if path.is_symlink():
            raise SandboxError(f"task data {data_dir} holds the symlink {path}; it is not shipped")
        if path.is_file():
            files.append(path)
    return files


def pack(data_dir: str | os.PathLike) -> tuple[str, dict[str, bytes]]:
    """(content hash, {relative path: bytes}) of a public data directory."""
    data_dir = Path(data_dir)
    digest, files = hashlib.sha256(), {}
    for path in _files(data_dir):
        rel, data = str(path.relative_to(data_dir)), path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
        files[rel] = data
    return digest.hexdigest()[:32], files


class SandboxActor:
    """One host-side pool of sandbox slots (a Ray actor; `max_concurrency` = `workers`)."""

    def __init__(self, sandbox: str, workers: int, sandbox_kwargs: dict, cache_dir: str | None = None):
        from rollout.sandbox.select import make_sandbox

        self.sandbox = make_sandbox(sandbox, **sandbox_kwargs)
        self.slots: queue.Queue[int] = queue.Queue()
        for slot in range(workers):
            self.slots.put(slot)
        self.cache = Path(cache_dir or Path(tempfile.gettempdir()) / "ace-jax-ray-data")
        self.cache.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.cache, 0o755)  # the sandbox's unprivileged uid reads the data
        self.fetched = 0
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"sandbox": self.sandbox.name, "isolated": self.sandbox.isolated, "host": socket.gethostname(),
                "pid": os.getpid(), "fetched": self.fetched}

    def data_dir(self, key: str, refs: list) -> Path:
        """The host's copy of the data `key`, fetched from the object store by the first actor."""
        import ray

        target = self.cache / key
        if target.is_dir():
            return target
        with open(self.cache / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.is_dir():
                files = ray.get(refs[0])
                with self._lock:
                    self.fetched += 1
                staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.cache))
                for rel, data in files.items():
                    path = staging / rel
                    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    path.write_bytes(data)
                    path.chmod(0o644)
                staging.chmod(0o755)
                os.rename(staging, target)
        return target

    def run(self, script: str, key: str, refs: list, limits: Limits) -> ExecResult:
        data = self.data_dir(key, refs)
        slot = self.slots.get()
        try:
            return self.sandbox.run(script, data, limits, slot)
        finally:
            self.slots.put(slot)

    def close(self) -> None:
        self.sandbox.close()


def _retryable(ray) -> tuple[type[BaseException], ...]:
    """What an actor or host failure raises: the actor or its node died, the sandbox could not start."""
    ex = ray.exceptions
    names = ("RayActorError", "ActorUnavailableError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n)) + (SandboxError,)


class RemoteSandbox(Sandbox):
    """The trainer-side sandbox whose `run` executes on the actors (slot -> actor, retried)."""

    def __init__(self, ray, actors: list, workers: int, max_attempts: int, info: dict):
        self.ray, self.actors, self.workers, self.max_attempts = ray, actors, workers, max_attempts
        self.name, self.isolated = info["sandbox"], info["isolated"]
        self.retries = 0
        self.shipped: dict[str, object] = {}  # data key -> object ref
        self._keys: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._retryable = _retryable(ray)

    def _ship(self, data_dir: Path) -> tuple[str, object]:
        stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in _files(data_dir))
        with self._lock:
            key = self._keys.get(stamp)
            if key is None:
                key, files = pack(data_dir)
                self._keys[stamp] = key
                if key not in self.shipped:
                    self.shipped[key] = self.ray.put(files)
            return key, self.shipped[key]

    def run(self, script: str, data_dir, limits: Limits = Limits(), slot: int = 0) -> ExecResult:
        data_dir = Path(data_dir).resolve()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data directory {data_dir} does not exist")
        key, ref = self._ship(data_dir)
        first = slot // self.workers
        for attempt in range(self.max_attempts):
            actor = self.actors[(first + attempt) % len(self.actors)]
            try:
                return self.ray.get(actor.run.remote(script, key, [ref], limits))
            except self._retryable as exc:
                with self._lock:
                    self.retries += 1
                if attempt + 1 == self.max_attempts:
                    raise SandboxError(f"execution failed on {self.max_attempts} attempt(s), the last: {exc}") from exc
        raise AssertionError("unreachable")


class RayExecutor(Executor):
    """`actors` Ray actors of `workers` slots each, running backend `sandbox` on their hosts."""

    name = "ray"

    def __init__(self, sandbox: str = "auto", workers: int = 2, *, actors: int = 1, address: str = "",
                 actor_cpus: float = 1.0, max_attempts: int = 3, cache_dir: str | None = None,
                 placement_timeout_s: float = 120.0, **sandbox_kwargs):
        if actors < 1:
            raise ValueError(f"ray executor needs at least 1 actor, got {actors}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        ray = import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                     log_to_driver=False)
        remote = ray.remote(SandboxActor).options(max_concurrency=workers, num_cpus=actor_cpus, max_restarts=3,
                                                  scheduling_strategy="SPREAD")
        self._actors = [remote.remote(sandbox, workers, sandbox_kwargs, cache_dir) for _ in range(actors)]
        try:
            infos = ray.get([a.describe.remote() for a in self._actors], timeout=placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self._kill_actors(ray, graceful=False)
            total, free = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
            raise SandboxError(f"the Ray cluster could not place {actors} sandbox actor(s) of {actor_cpus:g} CPU "
                               f"within {placement_timeout_s:g} s (cluster CPUs: {total:g}, free: {free:g}); "
                               "lower env.ray_actors") from None
        except Exception:
            self._kill_actors(ray, graceful=False)
            raise
        self.actor_info = infos
        self.remote = RemoteSandbox(ray, self._actors, workers, max_attempts, infos[0])
        self.sandbox_name = self.remote.name
        self.pool = WorkerPool(self.remote, actors * workers)
        self._ray = ray

    @property
    def retries(self) -> int:  # type: ignore[override]
        return self.remote.retries

    @property
    def actors(self) -> list:
        return list(self._actors)

    def map(self, fn: Callable[..., T], items: Iterable) -> list[T]:
        return self.pool.map(fn, items)

    def _kill_actors(self, ray, graceful: bool = True) -> None:
        for actor in self._actors:
            if graceful:
                try:
                    ray.get(actor.close.remote(), timeout=30)
                except Exception:  # a dead actor has nothing to close
                    pass
            ray.kill(actor, no_restart=True)

    def close(self) -> None:
        try:
            self.pool.close()
            self._kill_actors(self._ray)
        finally:
            if self._owns_ray:
                self._ray.shutdown()
