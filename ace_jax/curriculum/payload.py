"""``PayloadStore``: the texts of buffer entries (code, feedback, spec, ...), out of line.

Payloads are dicts of strings keyed by an int id handed out in order (0, 1, 2, ...). In memory
by default; with ``path`` every payload is also appended as one JSON line to that file, and
only the byte offsets stay in memory, so the store can grow on disk. ``discard`` frees the
in-memory copy of payloads whose entries were evicted (the file is append-only).

``state_dict`` holds what a checkpoint needs: in memory, the live payloads themselves; on disk,
the file's length and offsets. Restoring truncates the file to that length, so payloads
appended after the checkpoint are forgotten.

Payloads are kept as given (no copy; do not mutate one after putting it). ``put_many`` checks
that each is a dict; that keys and values are strings is checked when they are written to disk
or, in memory, by ``state_dict`` (once per checkpoint, off the per-step hot path).
"""

from __future__ import annotations

import json
from array import array
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

Payload = Mapping[str, str]


class PayloadStore:
    """Append-only store of payload dicts keyed by int id."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._next_id = 0
        self._mem: list[dict[str, str] | None] = []  # memory mode: id -> payload (None: gone)
        self._offsets = array("q")  # disk mode: byte offset of each line
        self._nbytes = 0
        self._fh = None
        self._disk = self.path is not None
        if self._disk:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > 0:
                raise FileExistsError(
                    f"payload file {self.path} already exists; restore it with "
                    "PayloadStore.from_state_dict or choose a new path"
                )
            self._fh = open(self.path, "ab")

    # ------------------------------------------------------------------ writing
    def put(self, payload: Payload) -> int:
        return int(self.put_many([payload])[0])

    def put_many(self, payloads: Sequence[Payload]) -> np.ndarray:
        """Store dict payloads in order; returns their ids (int64)."""
        n = len(payloads)
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        checked = _check_dicts(payloads)
        if not self._disk:
            self._mem.extend(checked)
        else:
            for pid, p in enumerate(checked, self._next_id):
                _check_strings(pid, p)
            lines = [
                (json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n").encode()
                for p in checked
            ]
            for line in lines:
                self._offsets.append(self._nbytes)
                self._nbytes += len(line)
            self._handle().write(b"".join(lines))
        self._next_id += n
        return ids

    def discard(self, ids: Iterable[int]) -> None:
        """Forget payloads no entry refers to any more (memory mode frees them; ids < 0 ignored)."""
        if not self._disk:
            mem = self._mem
            ids = np.asarray(ids, dtype=np.int64)
            for i in ids[(ids >= 0) & (ids < self._next_id)].tolist():
                mem[i] = None

    # ------------------------------------------------------------------ reading
    def get(self, pid: int) -> dict[str, str]:
        pid = int(pid)
        if not 0 <= pid < self._next_id:
            raise KeyError(f"payload id {pid} is unknown (store holds ids 0..{self._next_id - 1})")
        if not self._disk:
            if self._mem[pid] is None:
                raise KeyError(f"payload id {pid} was discarded")
            return dict(self._mem[pid])
        if self._fh is not None:
            self._fh.flush()
        start = self._offsets[pid]
        end = self._offsets[pid + 1] if pid + 1 < len(self._offsets) else self._nbytes
        with open(self.path, "rb") as f:
            f.seek(start)
            return json.loads(f.read(end - start).decode())

    def __len__(self) -> int:
        return self._next_id

    def __contains__(self, pid: int) -> bool:
        pid = int(pid)
        if not self._disk:
            return 0 <= pid < self._next_id and self._mem[pid] is not None
        return 0 <= pid < self._next_id

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """A copy of everything needed to restore this store exactly."""
        if not self._disk:
            ids = [i for i, p in enumerate(self._mem) if p is not None]
            for pid in ids:
                _check_strings(pid, self._mem[pid])
            return {
                "mode": "memory",
                "next_id": self._next_id,
                "ids": np.asarray(ids, dtype=np.int64),
                "payloads": [dict(self._mem[i]) for i in ids],
            }
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return {
            "mode": "disk",
            "next_id": self._next_id,
            "path": str(self.path),
            "nbytes": self._nbytes,
            "offsets": np.frombuffer(self._offsets, dtype=np.int64).copy(),
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], path: str | os.PathLike | None = None
    ) -> "PayloadStore":
        """Restore; a disk store's file (``path`` or the saved one) is truncated to the state."""
        mode = state["mode"]
        store = cls()
        store._next_id = int(state["next_id"])
        if mode == "memory":
            store._mem = [None] * store._next_id
            for i, p in zip(np.asarray(state["ids"]).tolist(), state["payloads"]):
                store._mem[i] = dict(p)
            return store
        if mode != "disk":
            raise ValueError(f"payload store mode={mode!r} is not allowed; allowed: disk, memory")
        store.path = Path(path if path is not None else state["path"])
        store._disk = True
        nbytes = int(state["nbytes"])
        size = store.path.stat().st_size if store.path.exists() else -1
        if size < nbytes:
            raise ValueError(
                f"payload file {store.path} holds {max(size, 0)} bytes but the checkpoint "
                f"knew {nbytes}: it was truncated or replaced"
            )
        with open(store.path, "r+b") as f:
            f.truncate(nbytes)
        store._nbytes = nbytes
        store._offsets = array("q", np.asarray(state["offsets"], dtype=np.int64).tobytes())
        return store

    def _handle(self):
        if self._fh is None:
            self._fh = open(self.path, "ab")
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if self._fh is not None:
                self._fh.close()
        except Exception:
            pass


def _check_dicts(payloads: Sequence[Payload]) -> list[dict[str, str]]:
    """``payloads`` as a list, or TypeError unless each one is a dict (the hot-path check)."""
    out = payloads if isinstance(payloads, list) else list(payloads)
    if not set(map(type, out)) <= {dict}:
        bad = next(p for p in out if not isinstance(p, dict))
        raise TypeError(f"a payload must be a dict of strings, got {type(bad).__name__}")
    return out


def _check_strings(pid: int, payload: Payload) -> None:
    for k, v in payload.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"payload {pid}: key {k!r} must map a str to a str, got "
                            f"{type(v).__name__}")
