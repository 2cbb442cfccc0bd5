"""A persistent, content-addressed execution cache shared by runs (sqlite, size-bounded).

Solution scripts are deterministic (fixed seeds, one BLAS thread), so an execution is a
function of its key:

    sha256(task data hash, script hash, limits, solution-environment version, sandbox backend class)

`CachingSandbox` wraps any backend: `run` returns the stored `ExecResult` for a known key
and executes (then stores) otherwise. Grading and rewards are recomputed from the stored
submission, so they never go stale. The store is one sqlite file in WAL mode, safe when
several processes and threads use it; past `max_bytes` the least recently used entries go.

`ace_jax.train.exec_cache.PersistentExecutionCache` puts it behind the training loop's
`cache.run(pool, items)` convention.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from rollout.machine_files import home
from rollout.sandbox.base import ExecResult, Limits, Sandbox

DEFAULT_MAX_MB = 512
_PACKAGES = ("numpy", "pandas", "scikit-learn", "scipy")
_SCHEMA = """CREATE TABLE IF NOT EXISTS executions (
    key TEXT PRIMARY KEY, result TEXT NOT NULL, submission BLOB, size INTEGER NOT NULL, used REAL NOT NULL)"""


def default_cache_dir() -> Path:
    """$ACE_JAX_HOME/exec-cache, else ~/.cache/ace-jax/exec-cache."""
    return home() / "exec-cache"


_DATA_HASHES: dict[tuple, str] = {}


def data_hash(data_dir: str | os.PathLike) -> str:
    """sha256 over the names and bytes of every file under `data_dir` (memoized by size and mtime)."""
    root = Path(data_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = (str(root.resolve()), tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                                        for p in files))
    if stamp not in _DATA_HASHES:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
        _DATA_HASHES[stamp] = h.hexdigest()
    return _DATA_HASHES[stamp]


def solution_env_version(sandbox: Sandbox) -> str:
    """What the script runs on: the backend's interpreter or image, and the pinned packages."""
    versions = []
    for name in _PACKAGES:
        try:
            versions.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}==absent")
    env = getattr(sandbox, "env", None)
    where = getattr(env, "python", None) or getattr(sandbox, "image", None) or ""
    return f"{where};{','.join(versions)}"


def execution_key(data_dir: str | os.PathLike, script: str, limits: Limits, sandbox: Sandbox) -> str:
    """The content address of one execution (see the module doc)."""
    parts = {"data": data_hash(data_dir), "script": hashlib.sha256(script.encode()).hexdigest(),
             "limits": dataclasses.asdict(limits), "env": solution_env_version(sandbox),
             "backend": f"{type(sandbox).__module__}.{type(sandbox).__qualname__}"}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class ExecutionStore:
    """The sqlite file: `get` / `put` of `ExecResult`s by key, least recently used evicted."""

    def __init__(self, directory: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_MB << 20):
        if max_bytes <= 0:
            raise ValueError(f"execution cache: max_bytes must be > 0, got {max_bytes}")
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "executions.sqlite"
        self.max_bytes = int(max_bytes)
        self._local = threading.local()
        with self._connect() as db:
            db.execute(_SCHEMA)
            db.execute("CREATE INDEX IF NOT EXISTS by_use ON executions (used)")

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            _set_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def get(self, key: str, limits: Limits) -> ExecResult | None:
        db = self._connect()
        row = db.execute("SELECT result, submission FROM executions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        db.execute("UPDATE executions SET used = ? WHERE key = ?", (time.time(), key))
        return ExecResult(**json.loads(row[0]), submission=row[1], limits=limits, from_cache=True)

    def put(self, key: str, result: ExecResult) -> None:
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                  if f.name not in ("submission", "limits", "from_cache")}
        text = json.dumps(fields)
        size = len(text) + len(result.submission or b"") + len(key)
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO executions VALUES (?, ?, ?, ?, ?)",
                       (key, text, result.submission, size, time.time()))
            total = db.execute("SELECT COALESCE(SUM(size), 0) FROM executions").fetchone()[0]
            if total > self.max_bytes:  # drop the least recently used down to 90% of the bound
                db.execute("""DELETE FROM executions WHERE key IN (SELECT key FROM (SELECT key, SUM(size)
                              OVER (ORDER BY used, key ROWS UNBOUNDED PRECEDING) - size AS before
                              FROM executions) WHERE before < ?)""", (total - int(0.9 * self.max_bytes),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM executions").fetchone()[0]

    def total_bytes(self) -> int:
        return self._connect().execute("SELECT COALESCE(SUM(size), 0) FROM executions").fetchone()[0]


class CachingSandbox(Sandbox):
    """A backend whose executions go through an `ExecutionStore`; counts hits and misses."""

    def __init__(self, inner: Sandbox, store: ExecutionStore):
        self.inner, self.store = inner, store
        self.name, self.isolated = inner.name, inner.isolated
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def run(self, script: str, data_dir: str | os.PathLike, limits: Limits = Limits(), slot: int = 0) -> ExecResult:
        key = execution_key(data_dir, script, limits, self.inner)
        cached = self.store.get(key, limits)
        with self._lock:
            if cached is not None:
                self.hits += 1
            else:
                self.misses += 1
        if cached is not None:
            return cached
        result = self.inner.run(script, data_dir, limits, slot)
        if not (result.timed_out or result.oom_killed):  # a machine-load outcome, not the script's
            self.store.put(key, result)
        return result

    def close(self) -> None:
        self.inner.close()


def _set_wal(db: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """WAL mode, which persists in the file. Switching takes an exclusive lock, and sqlite does not
    wait on its busy timeout for it: when several processes open a new store at once, retry."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
