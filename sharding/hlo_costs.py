"""FLOPs of a compiled step counted from its HLO text, weighted by loop trip counts.

XLA's `cost_analysis()` does not scale the ops inside a while loop by its trip count on every
backend (the TPU compiler's count of a 48-layer scan is far below the step's work), so the plan
counts matmuls itself: every `dot` (2 x output elements x contracted size) and `convolution` (the
TPU compiler's form of a dot: 2 x output elements x kernel elements per output feature), and
every kernel custom call (`tpu_custom_call`) by the cost estimate its author declared
(`"cost_estimate":{"flops":...}`), each times the executions of its computation per step.
HBM bytes likewise: the operands and results of every op outside fused computations (a fusion
reads its inputs and writes its outputs once), times its executions; a buffer that an op (or a
fusion's inner op) only slices (`dynamic-slice`) or updates in place (`dynamic-update-slice`,
as the layer scan does with its stacked weights and gradients) counts as the slice moved.
"""

from __future__ import annotations

import math
import re

from sharding.collectives import _ARRAY, _OP, _arrays, execution_counts, parse_computations

_DECLARED = re.compile(r'\\?"cost_estimate\\?":\{\\?"flops\\?":\\?"?(\d+)')
_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_NO_TRAFFIC = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "while", "conditional", "call",
               "after-all", "partition-id", "replica-id", "opt-barrier", "iota"}


def _fused(comps: dict[str, list[str]]) -> set[str]:
    """Computations that run inside a fusion (called by a `fusion` op, transitively)."""
    stack = [c for lines in comps.values() for line in lines if " fusion(" in line
             for c in re.findall(r"calls=%?([\w.\-]+)", line)]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack += [c for line in comps.get(name, ()) for c in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)]
    return seen


def _dims(type_text: str) -> list[int] | None:
    m = _ARRAY.search(type_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else None


def _operands(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])


def _window(rest: str) -> dict[str, list[int]]:
    m = re.search(r"window=\{([^}]*)\}", rest)
    out: dict[str, list[int]] = {}
    for key, value in re.findall(r"(\w+)=([\d_x\-]+)", m.group(1) if m else ""):
        if key == "pad":
            out["pad"] = [int(v.split("_")[0]) for v in value.split("x")]
        else:
            out[key] = [int(v) for v in value.split("x")]
    return out


def _taps(n: int, out: int, size: int, pad: int, stride: int, lhs_dilate: int, rhs_dilate: int) -> int:
    """(output position, window tap) pairs of one spatial dim that land on a real (unpadded,
    undilated) input element."""
    last = (n - 1) * lhs_dilate
    if lhs_dilate == 1:
        total = 0
        for w in range(size):
            lo = max(0, -(-(pad - w * rhs_dilate) // stride))
            hi = min(out - 1, (last + pad - w * rhs_dilate) // stride)
            total += max(0, hi - lo + 1)
        return total
    return sum(1 for w in range(size) for o in range(out)
               if 0 <= (pos := o * stride + w * rhs_dilate - pad) <= last and pos % lhs_dilate == 0)


def _conv_flops(out: list[int], lhs: list[int], rhs: list[int], rest: str) -> float:
    m = _LABELS.search(rest)
    if not m or "o" not in m.group(2) or "i" not in m.group(2):
        return 0.0
    lhs_l, rhs_l, out_l = m.groups()
    win = _window(rest)
    taps = 1
    for k, digit in enumerate(sorted(c for c in rhs_l if c.isdigit())):
        get = lambda key, default: win.get(key, [default] * (k + 1))[k]  # noqa: E731
        taps *= _taps(lhs[lhs_l.index(digit)], out[out_l.index(digit)], rhs[rhs_l.index(digit)],
                      get("pad", 0), get("stride", 1), get("lhs_dilate", 1), get("rhs_dilate", 1))
    other = math.prod(d for d, c in zip(out, out_l) if not c.isdigit())   # batch x output features
    return 2.0 * other * rhs[rhs_l.index("i")] * taps


def _matmul_flops(opcode: str, out: list[int], rest: str, types: dict[str, str]) -> float:
    ops = _operands(rest)
    lhs = _dims(types.get(ops[0], "")) if ops else None
    if opcode == "dot":
        m = _CONTRACT.search(rest)
        if lhs is None or not m:
            return 0.0
        contracted = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i)
        return 2.0 * math.prod(out) * contracted
    rhs = _dims(types.get(ops[1], "")) if len(ops) > 1 else None
    return _conv_flops(out, lhs, rhs, rest) if lhs is not None and rhs is not None else 0.0


def _slice_bytes(lines: list[str]) -> tuple[dict[int, float], float | None]:
    """For a fused computation: {parameter index: bytes it really moves} for parameters only
    sliced or updated in place, and the result bytes when the root is an in-place update."""
    params: dict[str, int] = {}
    types: dict[str, str] = {}
    uses: dict[str, list[tuple[str, int, str]]] = {}
    root_update = None
    for line in lines:
        op = _OP.match(line)
        if not op:
            continue
        result, type_text, opcode, rest = op.groups()
        types[result] = type_text
        if opcode == "parameter":
            params[result] = int(re.match(r"\s*(\d+)", rest).group(1))
            continue
        operands = _operands(rest)
        for pos, name in enumerate(operands):
            uses.setdefault(name, []).append((opcode, pos, result))
        if opcode == "dynamic-update-slice" and line.lstrip().startswith("ROOT") and len(operands) > 1:
            root_update = sum(_arrays(types.get(operands[1], "")))
    moved: dict[int, float] = {}
    for name, index in params.items():
        use = uses.get(name, [])
        if use and all(k == "dynamic-slice" and pos == 0 for k, pos, _ in use):
            moved[index] = sum(sum(_arrays(types[r])) for _, _, r in use)
        elif use and all(k == "dynamic-update-slice" and pos == 0 for k, pos, _ in use):
            moved[index] = 0.0   # written in place: the update is counted as the result
    return moved, root_update


def _op_bytes(opcode: str, type_text: str, rest: str, types: dict[str, str], comps, cache) -> float:
    operands = _operands(rest)
    size = lambda name: sum(_arrays(types.get(name, "")))  # noqa: E731
    result = sum(_arrays(type_text))
    if opcode == "dynamic-slice":
        return 2.0 * result
    if opcode == "dynamic-update-slice":
        return 2.0 * (size(operands[1]) if len(operands) > 1 else result)
    moved, root_update = {}, None
    if opcode == "fusion":
        m = re.search(r"calls=%?([\w.\-]+)", rest)
        if m and m.group(1) in comps:
            if m.group(1) not in cache:
                cache[m.group(1)] = _slice_bytes(comps[m.group(1)])
            moved, root_update = cache[m.group(1)]
    reads = sum(moved.get(i, size(name)) for i, name in enumerate(operands))
    return reads + (root_update if root_update is not None else result)


def hlo_flops(hlo: str) -> dict[str, float]:
    """{"matmul": XLA dots and convolutions, "kernels": declared kernel FLOPs, "kernel_calls",
    "total", "hbm_bytes"} per step."""
    comps, entry = parse_computations(hlo)
    out = {"matmul": 0.0, "kernels": 0.0, "kernel_calls": 0.0, "hbm_bytes": 0.0}
    if entry is None:
        out["total"] = 0.0
        return out
    counts, _ = execution_counts(comps, entry)
    fused = _fused(comps)
    cache: dict[str, tuple[dict[int, float], float | None]] = {}
    for name, n in counts.items():
        types: dict[str, str] = {}
        for line in comps.get(name, ()):
            op = _OP.match(line)
            if not op:
                continue
            result, type_text, opcode, rest = op.groups()
            types[result] = type_text
            if name not in fused and opcode not in _NO_TRAFFIC and not opcode.endswith("-done"):
                out["hbm_bytes"] += _op_bytes(opcode, type_text, rest, types, comps, cache) * n
            if opcode == "custom-call":
                m = _DECLARED.search(line)
                if m:
                    out["kernels"] += float(m.group(1)) * n
                    out["kernel_calls"] += n
            elif opcode in ("dot", "convolution"):
                dims = _dims(type_text)
                if dims is not None:
                    out["matmul"] += _matmul_flops(opcode, dims, rest, types) * n
    out["total"] = out["matmul"] + out["kernels"]
    return out
