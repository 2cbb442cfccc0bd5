"""Where ace-jax keeps what it builds once per machine: $ACE_JAX_HOME, else ~/.cache/ace-jax."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """$ACE_JAX_HOME, else ~/.cache/ace-jax (tasks, tokenizer, execution and compile caches)."""
    root = os.environ.get("ACE_JAX_HOME")
    return Path(root) if root else Path.home() / ".cache" / "ace-jax"
