"""Train-state checkpoints: orbax ``CheckpointManager``, atomic, keep-last-N, async.

One checkpoint step holds two items:

* ``state``: an arbitrary pytree of jax arrays (params, optimizer state, step, RNG keys;
  typed PRNG keys, NumPy arrays and Python scalars work too), written asynchronously by
  orbax: ``save`` returns once the arrays are copied off the device (so the caller may donate
  or delete them), the write finishes in the background; ``wait()`` / ``close()`` block
  until it is durable.
* ``extra``: the curriculum payload, a flat dict of NumPy arrays (any non-object dtype,
  zero-size included) plus a JSON dict; serialized synchronously inside ``save`` (so later
  in-place changes to the arrays cannot leak into the checkpoint) and round-tripped exactly.

Orbax writes each step into a temporary directory and renames it when complete (atomic).
A step that orbax lists but that cannot be read (truncated or deleted files) is handled by
``restore()`` without an explicit step: it falls back to the newest older step that
restores, moves every newer unreadable step aside to ``<step>.corrupt-<UTC timestamp>``
(a name orbax does not list, so saving that step again cannot collide), and warns
(``CheckpointFallbackWarning`` and the module logger). A step is moved aside only when an
older one restored with the same target: an error that every step shares (e.g. a target that
does not match) is raised and nothing is moved.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

_ARRAYS_FILE = "arrays.npz"
_META_FILE = "meta.json"


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint could not be restored; an older one was used."""


# ----------------------------------------------------------------------------- extra item
class ExtraCheckpointHandler(ocp.CheckpointHandler):
    """Writes ``arrays.npz`` (no pickle) and ``meta.json`` into the item directory."""

    def save(self, directory: epath.Path, args: "ExtraSave") -> None:
        if jax.process_index() != 0:
            return
        (directory / _ARRAYS_FILE).write_bytes(args.arrays_npz)
        (directory / _META_FILE).write_text(args.meta_json)

    def restore(self, directory: epath.Path, args: "ExtraRestore | None" = None):
        with (directory / _ARRAYS_FILE).open("rb") as f:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        meta = json.loads((directory / _META_FILE).read_text())
        return arrays, meta


@ocp.args.register_with_handler(ExtraCheckpointHandler, for_save=True)
@dataclasses.dataclass
class ExtraSave(ocp.args.CheckpointArgs):
    arrays_npz: bytes
    meta_json: str


@ocp.args.register_with_handler(ExtraCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class ExtraRestore(ocp.args.CheckpointArgs):
    pass


def _encode_extra(arrays: dict[str, np.ndarray] | None, meta: dict | None) -> ExtraSave:
    arrays = {} if arrays is None else arrays
    meta = {} if meta is None else meta
    for k, v in arrays.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"extra arrays: keys must be non-empty strings, got {k!r}")
        if not isinstance(v, np.ndarray):
            raise ValueError(f"extra arrays[{k!r}] must be a NumPy array, got {type(v).__name__}")
        if v.dtype.hasobject:
            raise ValueError(f"extra arrays[{k!r}] has dtype object, which cannot be saved")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    if not isinstance(meta, dict):
        raise ValueError(f"extra meta must be a dict, got {type(meta).__name__}")
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"extra meta is not JSON-serializable: {e}") from None
    if json.loads(text) != meta:
        raise ValueError(
            "extra meta does not round-trip through JSON exactly (tuples, non-string keys?)"
        )
    return ExtraSave(arrays_npz=buf.getvalue(), meta_json=text)


# ----------------------------------------------------------------------------- manager
@dataclasses.dataclass
class RestoredCheckpoint:
    step: int
    state: Any
    arrays: dict[str, np.ndarray]
    meta: dict


def _abstract(target: Any) -> Any:
    """Concrete jax arrays -> ShapeDtypeStruct with their sharding; other leaves unchanged."""

    def f(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(f, target)


class TrainCheckpointer:
    """Save / restore train state + curriculum payload under ``directory`` (one dir per step).

    ``max_to_keep`` (>= 2) newest steps are kept. With ``create=False`` a missing directory
    is a FileNotFoundError (for restore-only use).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        create: bool = True,
    ) -> None:
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 2:
            raise ValueError(f"max_to_keep must be an integer >= 2, got {max_to_keep!r}")
        self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
        if not create and not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=create,
                enable_async_checkpointing=async_save,
            ),
        )

    # -- queries
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    # -- save
    def save(
        self,
        step: int,
        state: Any,
        *,
        arrays: dict[str, np.ndarray] | None = None,
        meta: dict | None = None,
    ) -> None:
        """Save ``state`` (+ the curriculum ``arrays`` and JSON ``meta``) as ``step``.

        Returns when the arrays are off the device; the write completes in the background.
        """
        extra = _encode_extra(arrays, meta)
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"cannot save step {step} in {self.directory}: latest saved step is {latest}"
            )
        saved = self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), extra=extra),
            force=True,
        )
        if not saved:  # pragma: no cover - force=True should always save
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")

    def wait(self) -> None:
        """Block until every pending save is durable (raises its error if it failed)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def __enter__(self) -> "TrainCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- restore
    def _restore_step(self, step: int, target: Any) -> RestoredCheckpoint:
        state_args = ocp.args.StandardRestore(None if target is None else _abstract(target))
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=state_args, extra=ExtraRestore())
        )
        arrays, meta = out["extra"]
        return RestoredCheckpoint(step=step, state=out["state"], arrays=arrays, meta=meta)

    def restore(self, target: Any = None, *, step: int | None = None) -> RestoredCheckpoint:
        """Restore ``step`` (default: the newest restorable one) into ``target``'s layout.

        ``target``: a pytree like the saved state whose leaves are jax arrays or
        ``jax.ShapeDtypeStruct`` with shardings (sharded restore); ``None`` restores as saved.
        Arrays come back bit-identical. An explicit ``step`` never falls back.
        """
        self.wait()
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"checkpoint step {step} not found in {self.directory}; available: {steps}"
                )
            return self._restore_step(step, target)
        failed: list[tuple[int, BaseException]] = []
        for s in reversed(steps):
            try:
                restored = self._restore_step(s, target)
            except Exception as e:  # noqa: BLE001 - any read failure means unreadable
                failed.append((s, e))
                continue
            for bad, err in failed:
                self._move_aside(bad, err, fallback=s)
            return restored
        first_step, first_err = failed[0]
        raise RuntimeError(
            f"no checkpoint in {self.directory} could be restored (tried steps "
            f"{[s for s, _ in failed]}); newest step {first_step} failed with: {first_err!r}"
        ) from first_err

    def _move_aside(self, step: int, err: BaseException, *, fallback: int) -> None:
        src = self.directory / str(step)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dst = self.directory / f"{step}.corrupt-{stamp}"
        n = 1
        while dst.exists():
            dst = self.directory / f"{step}.corrupt-{stamp}-{n}"
            n += 1
        if jax.process_index() == 0:
            os.rename(src, dst)
        if jax.process_count() > 1:  # pragma: no cover - multi-host
            ocp.multihost.sync_global_processes(f"ace_jax_ckpt_move_aside_{step}")
        self._manager.reload()
        msg = (
            f"checkpoint step {step} in {self.directory} is incomplete or corrupt "
            f"({type(err).__name__}: {str(err)[:300]}); restored step {fallback} instead and "
            f"moved the bad one to {dst.name}"
        )
        log.warning(msg)
        warnings.warn(msg, CheckpointFallbackWarning, stacklevel=3)
