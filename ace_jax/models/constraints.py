"""Optional sharding hooks for the model: no-ops unless a hooks object is active.

`with constraints.use(hooks):` activates an object with (optionally) `constrain(x, logical_axes)`
(an activation sharding constraint), `gather_weight(w, logical_axes)` (a weight gathered for use) and `expert_ffn(backend, default_fn)` (a replacement for the
MoE expert computation, e.g. expert parallelism). The hooks act while a function is *traced*:
trace (jit) the function inside the `with` block. `sharding.context.model_hooks` builds them.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("ace_jax_model_hooks", default=None)


@contextlib.contextmanager
def use(hooks: Any) -> Iterator[Any]:
    """Activate `hooks` (None deactivates) for the duration of the block."""
    token = _ACTIVE.set(hooks)
    try:
        yield hooks
    finally:
        _ACTIVE.reset(token)


def active() -> Any:
    return _ACTIVE.get()


def constrain(x, logical_axes: Sequence[str | None]):
    """Sharding constraint of activation `x` by logical axis names; identity without hooks."""
    fn = getattr(_ACTIVE.get(), "constrain", None)
    return x if fn is None else fn(x, logical_axes)


def gather_weight(w, logical_axes: Sequence[str | None], dtype: Any = None):
    """Weight `w` cast to `dtype` (None: kept) in the layout it is used in (its FSDP axes
    gathered); without hooks just the cast."""
    fn = getattr(_ACTIVE.get(), "gather_weight", None)
    if fn is None:
        return w if dtype is None else w.astype(dtype)
    return fn(w, logical_axes, dtype)


def target_platform() -> str:
    """Platform the traced code compiles for: the active hooks' mesh devices, else JAX's backend
    (planning traces for TPU devices on a CPU host)."""
    mesh = getattr(_ACTIVE.get(), "mesh", None)
    if mesh is not None and getattr(mesh, "devices", None) is not None and mesh.devices.size:
        return mesh.devices.flat[0].platform
    import jax

    return jax.default_backend()


def expert_ffn(backend: str, default: Callable) -> Callable:
    """The expert computation to use for MoE `backend` (`default` without hooks)."""
    fn = getattr(_ACTIVE.get(), "expert_ffn", None)
    return default if fn is None else fn(backend, default)
