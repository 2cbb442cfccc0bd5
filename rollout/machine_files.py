"""What ace-jax keeps once per machine: where it lives ($ACE_JAX_HOME, else ~/.cache/ace-jax),
and an exclusive lock between the processes that share it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


def home() -> Path:
    """$ACE_JAX_HOME, else ~/.cache/ace-jax (tasks, tokenizer, execution and compile caches)."""
    root = os.environ.get("ACE_JAX_HOME")
    return Path(root) if root else Path.home() / ".cache" / "ace-jax"


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock (`flock`) on `lock_file`, created with its folder, for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
