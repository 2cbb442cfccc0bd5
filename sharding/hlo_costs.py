"""FLOPs of a compiled step counted from its HLO text, weighted by loop trip counts.

XLA's `cost_analysis()` does not scale the ops inside a while loop by its trip count on every
backend (the TPU compiler's count of a 48-layer scan is far below the step's work), so the plan
counts matmuls itself: every `dot` (2 x output elements x contracted size) and `convolution` (the
TPU compiler's form of a dot: 2 x output elements x kernel elements per output feature), and
every kernel custom call (`tpu_custom_call`) by the cost estimate its author declared
(`"cost_estimate":{"flops":...}`), each times the executions of its computation per step.
"""

from __future__ import annotations

import math
import re

from sharding.collectives import _ARRAY, _OP, execution_counts, parse_computations

_DECLARED = re.compile(r'\\?"cost_estimate\\?":\{\\?"flops\\?":\\?"?(\d+)')
_LABELS = re.compile(r"dim_labels=(\w+)_(\w+)->(\w+)")
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


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


def hlo_flops(hlo: str) -> dict[str, float]:
    """{"matmul": XLA dots and convolutions, "kernels": declared kernel FLOPs, "kernel_calls",
    "total"} per step."""
    comps, entry = parse_computations(hlo)
    out = {"matmul": 0.0, "kernels": 0.0, "kernel_calls": 0.0}
    if entry is None:
        out["total"] = 0.0
        return out
    counts, _ = execution_counts(comps, entry)
    for name, n in counts.items():
        types: dict[str, str] = {}
        for line in comps.get(name, ()):
            op = _OP.match(line)
            if not op:
                continue
            result, type_text, opcode, rest = op.groups()
            types[result] = type_text
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
