"""Grouped matmul with a custom VJP of three grouped matmuls (forward, input and weight gradients).

`grouped_matmul(lhs [M, K], rhs [G, K, N], group_sizes [G])` multiplies the rows of group g
(consecutive, in group order) by rhs[g]; rows past sum(group_sizes) come out zero. Its VJP is
    d lhs = gmm(d out, rhs^T)             (grouped matmul, transposed weights)
    d rhs = tgmm(lhs^T, d out)            (one [K, N] product per group, over that group's rows only)
so the weight gradient costs 2*M*K*N FLOPs, not G times that (`jax.lax.ragged_dot`'s own
autodiff computes it densely over every group on TPU).

Implementations (`IMPLS`):
- `megablox`: the Pallas TPU kernels `gmm` / `tgmm` of jax.experimental.pallas.ops.tpu.megablox.
- `megablox-interpret`: the same kernels in Pallas interpret mode (any platform; for tests).
- `xla`: `jax.lax.ragged_dot` / `ragged_dot_general` (the reference; any platform). XLA:GPU's
  default lowering expands a ragged dot into a dense batched dot over every group.
- `tokamax`, `tokamax-mosaic`, `tokamax-triton`: tokamax's `ragged_dot` / `ragged_dot_general`
  (GPU kernels: Mosaic GPU, Triton; `tokamax` lets tokamax choose), falling back to tokamax's XLA
  path where a kernel does not run (e.g. on CPU). Needs the `gpu` extra (tokamax).
`default_impl(platform)` picks `megablox` for TPU targets, `tokamax` for GPU targets when tokamax
is installed, and `xla` otherwise. Mosaic lowers the
kernels' bf16 dots with the default matmul precision: `jax_default_matmul_precision="highest"`
(fp32 contract precision) does not compile for bf16 operands.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

import jax
import jax.numpy as jnp

IMPLS = ("megablox", "megablox-interpret", "xla", "tokamax", "tokamax-mosaic", "tokamax-triton")
# tokamax `implementation=` per impl: a kernel, then tokamax's XLA path where the kernel cannot run.
_TOKAMAX = {"tokamax": None, "tokamax-mosaic": ("mosaic", "xla"), "tokamax-triton": ("triton", "xla")}
_TGMM_DIMS = jax.lax.RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([0], [0]), ([], [])), lhs_ragged_dimensions=[0], rhs_group_dimensions=[])


def tokamax_available() -> bool:
    return importlib.util.find_spec("tokamax") is not None


def default_impl(platform: str) -> str:
    """The grouped-matmul implementation for a compile target platform ('tpu', 'gpu', 'cpu')."""
    if platform == "tpu":
        return "megablox"
    return "tokamax" if platform == "gpu" and tokamax_available() else "xla"


def _megablox():
    # The package's `gmm` attribute is the custom-VJP function; the kernels live in the module.
    return importlib.import_module("jax.experimental.pallas.ops.tpu.megablox.gmm")


def _tokamax():
    """The tokamax module, its absl flags marked parsed at their defaults (tokamax would otherwise
    parse sys.argv, this program's own arguments, as absl flags on first use)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return importlib.import_module("tokamax")


def _kernel(name: str, *arrays, interpret: bool, **kw):
    """Call megablox kernel `name`, inside shard_map as well, where Pallas wants each output's
    varying mesh axes declared (megablox leaves them unset). Compiled: outputs are declared varying
    over the union of the inputs' axes while the kernel is traced. Interpret mode (whose kernel
    body sees the varying inputs): traced without the check, the result then marked varying; this
    runs inside the custom VJP's rules, which are never differentiated, so the mark's transpose
    is never taken (not under jax.checkpoint, which re-traces with the check)."""
    fn = getattr(_megablox(), name)
    types = [jax.typeof(a).manual_axis_type for a in arrays]
    axes = frozenset().union(*(t.varying for t in types))
    if not axes:
        return fn(*arrays, interpret=interpret, **kw)
    if interpret:
        from jax._src import config  # the check's switch has no public name

        with config._check_vma(False):
            out = fn(*arrays, interpret=True, **kw)
        return jax.lax.pcast(out, tuple(sorted(axes)), to="varying")
    pallas_core = importlib.import_module("jax._src.pallas.core")
    declared = types[0].update(varying=axes)
    original = pallas_core._convert_out_shape_to_aval

    def convert(shape):
        if isinstance(shape, jax.ShapeDtypeStruct) and shape.manual_axis_type is None:
            shape = jax.ShapeDtypeStruct(shape.shape, shape.dtype, manual_axis_type=declared)
        return original(shape)

    pallas_core._convert_out_shape_to_aval = convert
    try:
        return fn(*arrays, interpret=False, **kw)
    finally:
        pallas_core._convert_out_shape_to_aval = original


def _varying(x) -> frozenset:
    return jax.typeof(x).manual_axis_type.varying


def _sum_to(ct: jax.Array, primal: jax.Array) -> jax.Array:
    """Inside shard_map: sum a cotangent over the mesh axes it varies on and its primal does not
    (e.g. a weight gradient from tokens sharded over more axes than the weights)."""
    extra = tuple(sorted(_varying(ct) - _varying(primal)))
    return jax.lax.psum(ct, extra) if extra else ct


def _tile(dim: int, choices=(512, 256, 128)) -> int:
    return next((t for t in choices if dim % t == 0), dim)


def _row_tile(m: int) -> int:
    return min(512, -(-m // 8) * 8)


def _mask_rows(out: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """Zero the rows past sum(group_sizes) (the TPU kernel leaves them uninitialized)."""
    valid = jnp.arange(out.shape[0]) < jnp.sum(group_sizes)
    return jnp.where(valid[:, None], out, jnp.zeros((), out.dtype))


def _pad_rows(x: jax.Array, tm: int) -> jax.Array:
    pad = -x.shape[0] % tm
    return jnp.pad(x, ((0, pad), (0, 0))) if pad else x


def _gmm(lhs, rhs, group_sizes, impl: str, transpose_rhs: bool = False):
    """lhs [M, K] @ rhs[g] per group ([G, N, K] and transposed when `transpose_rhs`) -> [M, N]."""
    if impl == "xla":
        w = rhs.swapaxes(1, 2) if transpose_rhs else rhs
        return jax.lax.ragged_dot(lhs, w, group_sizes, preferred_element_type=lhs.dtype)
    if impl in _TOKAMAX:
        w = rhs.swapaxes(1, 2) if transpose_rhs else rhs
        out = _tokamax().ragged_dot(lhs, w, group_sizes, preferred_element_type=lhs.dtype,
                                    implementation=_TOKAMAX[impl])
        return _mask_rows(out, group_sizes)
    m, k = lhs.shape
    n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    tm = _row_tile(m)
    out = _kernel("gmm", _pad_rows(lhs, tm), rhs, group_sizes, preferred_element_type=lhs.dtype,
                  tiling=(tm, _tile(k), _tile(n)), transpose_rhs=transpose_rhs,
                  interpret=impl == "megablox-interpret")
    return _mask_rows(out[:m], group_sizes)


def _tgmm(lhs, grad, group_sizes, impl: str, out_dtype):
    """Per group g: lhs[rows of g]^T @ grad[rows of g] -> [G, K, N] (lhs [M, K], grad [M, N])."""
    if impl == "xla":
        return jax.lax.ragged_dot_general(lhs, grad, group_sizes, _TGMM_DIMS,
                                          preferred_element_type=jnp.float32).astype(out_dtype)
    if impl in _TOKAMAX:
        return _tokamax().ragged_dot_general(
            lhs, grad, group_sizes, _TGMM_DIMS, preferred_element_type=jnp.float32,
            implementation=_TOKAMAX[impl]).astype(out_dtype)
    m, k = lhs.shape
    tm = _row_tile(m)
    return _kernel("tgmm", _pad_rows(lhs, tm).swapaxes(0, 1), _pad_rows(grad, tm), group_sizes,
                   preferred_element_type=out_dtype, tiling=(tm, _tile(k), _tile(grad.shape[1])),
                   interpret=impl == "megablox-interpret")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _grouped_matmul(lhs, rhs, group_sizes, impl):
    return _gmm(lhs, rhs, group_sizes, impl)


def _fwd(lhs, rhs, group_sizes, impl):
    return _gmm(lhs, rhs, group_sizes, impl), (lhs, rhs, group_sizes)


def _bwd(impl, residuals, grad):
    lhs, rhs, group_sizes = residuals
    grad = _mask_rows(grad, group_sizes)
    d_lhs = _gmm(grad, rhs, group_sizes, impl, transpose_rhs=True)
    d_rhs = _tgmm(lhs, grad, group_sizes, impl, rhs.dtype)
    return _sum_to(d_lhs, lhs), _sum_to(d_rhs, rhs), None


_grouped_matmul.defvjp(_fwd, _bwd)


def grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, impl: str = "xla") -> jax.Array:
    """[M, K] x [G, K, N] grouped by `group_sizes` [G] (int32) -> [M, N] in lhs's dtype."""
    if impl not in IMPLS:
        raise ValueError(f"unknown grouped-matmul impl {impl!r}; allowed: {list(IMPLS)}")
    if lhs.ndim != 2 or rhs.ndim != 3 or lhs.shape[1] != rhs.shape[1]:
        raise ValueError(f"grouped_matmul needs lhs [M, K] and rhs [G, K, N]; got {lhs.shape} and {rhs.shape}")
    if group_sizes.shape != (rhs.shape[0],):
        raise ValueError(f"group_sizes must be [{rhs.shape[0]}], got {tuple(group_sizes.shape)}")
    rhs = rhs.astype(lhs.dtype)
    return _grouped_matmul(lhs, rhs, group_sizes.astype(jnp.int32), impl)
