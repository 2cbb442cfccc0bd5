"""Collective traffic per step per mesh axis, read from a compiled executable's HLO text.

Every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute is found (async
`-start` forms included), weighted by the trip count of the while loops around it (the layer
scan), and its replica groups (explicit `{{0,1},..}`, iota `[4,2]<=[2,4]T(1,0)` or mesh
`mesh['axis_0'=4,..] {'axis_0'}`) are mapped to the mesh axes along which the devices of a
group differ. Partition / device id p is the p-th device of the mesh in row-major order.

Bytes are per device per step: payload (the op's result, or operand for reduce-scatter) and
ring traffic (all-gather / reduce-scatter / all-to-all: (n-1)/n x payload; all-reduce:
2(n-1)/n x payload; collective-permute: payload).

`widened` marks the share of a collective's payload that is bf16 data the compiler widened to
f32 for the collective (its operand is a `convert` from bf16, alone or as a fusion's root, or its
reducer is a `*_promoted` clone): the CPU compiler does this to every bf16 collective, a GPU or
TPU moves such data in bf16.
`bf16_traffic` counts those bytes at their bf16 size.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from typing import Iterable

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
                "s4": 0.5, "u4": 0.5}
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_CALLS = re.compile(r"\b(?:calls|body|condition|branch_computations|async_execution_thread_computation)="
                    r"(\{[^}]*\}|%?[\w.\-]+)")


@dataclasses.dataclass
class Collective:
    kind: str
    payload: float          # bytes per device, one execution
    group_size: int
    axes: tuple[str, ...]
    count: int              # executions per step (loop trip counts)
    widened: float = 0.0    # fraction of the payload that is bf16 data widened to f32 by the compiler

    @property
    def traffic(self) -> float:
        n = self.group_size
        if n <= 1:
            return 0.0
        if self.kind == "all-reduce":
            return 2 * (n - 1) / n * self.payload
        if self.kind == "collective-permute":
            return self.payload
        return (n - 1) / n * self.payload

    @property
    def bf16_traffic(self) -> float:
        """Traffic with the widened bf16 data counted at 2 bytes per element."""
        return self.traffic * (1 - self.widened / 2)


def _arrays(type_text: str) -> list[float]:
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype not in _DTYPE_BYTES:
            continue
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        out.append(n * _DTYPE_BYTES[dtype])
    return out


def parse_computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
    """{computation name: op lines} and the entry computation's name."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
        else:
            comps[current].append(line)
    return comps, entry


def _trip_count(op_line: str, comps: dict[str, list[str]], condition: str | None) -> int | None:
    m = re.search(r'known_trip_count"?\s*:\s*\{\s*"?n"?\s*:\s*"?(\d+)', op_line)
    if m:
        return int(m.group(1))
    if condition and condition in comps:
        consts = {}
        for line in comps[condition]:
            op = _OP.match(line)
            if op and op.group(3) == "constant":
                c = re.match(r"\s*(-?\d+)\)", op.group(4))
                if c:
                    consts[op.group(1)] = int(c.group(1))
            if "ROOT" in line and " compare(" in line and "direction=LT" in line:
                args = re.findall(r"%([\w.\-]+)", line.split("compare(", 1)[1].split(")")[0])
                for a in args:
                    if a in consts:
                        return consts[a]
    return None


def execution_counts(comps: dict[str, list[str]], entry: str) -> tuple[dict[str, int], list[str]]:
    """Executions per step of each computation reachable from the entry through control flow."""
    mult: dict[str, int] = defaultdict(int)
    notes: list[str] = []
    stack = [(entry, 1)]
    while stack:
        name, m = stack.pop()
        mult[name] += m
        for line in comps.get(name, ()):
            op = _OP.match(line)
            if not op:
                continue
            kind = op.group(3)
            callees = []
            for target in _CALLS.findall(line):
                callees += re.findall(r"%?([\w.\-]+)", target.strip("{}"))
            if kind == "while":
                body = re.search(r"body=%?([\w.\-]+)", line)
                cond = re.search(r"condition=%?([\w.\-]+)", line)
                trips = _trip_count(line, comps, cond.group(1) if cond else None)
                if trips is None:
                    notes.append(f"while loop {op.group(1)}: unknown trip count, counted once")
                    trips = 1
                if body:
                    stack.append((body.group(1), m * trips))
                continue
            for callee in callees:
                if callee in comps and callee != name:
                    stack.append((callee, m))
    return mult, notes


def _groups(line: str, num_devices: int) -> list[list[int]] | None:
    m = re.search(r"replica_groups=\{((?:\{[\d,\s]*\},?\s*)*)\}", line)
    if m:
        groups = [[int(x) for x in g.split(",") if x.strip()] for g in re.findall(r"\{([\d,\s]*)\}", m.group(1))]
        return [g for g in groups if g] or [list(range(num_devices))]
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:
        shape = [int(x) for x in m.group(1).split(",")]
        ids = np.arange(math.prod(int(x) for x in m.group(2).split(","))).reshape(
            [int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
        return ids.reshape(shape).tolist()
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        axes = re.findall(r"'?(\w+)'?\s*=\s*(\d+)", m.group(1))
        names = [a for a, _ in axes]
        sizes = [int(s) for _, s in axes]
        over = [names.index(a) for a in re.findall(r"'?(\w+)'?", m.group(2)) if a in names]
        ids = np.arange(math.prod(sizes)).reshape(sizes)
        rest = [i for i in range(len(sizes)) if i not in over]
        ids = ids.transpose(rest + over).reshape(-1, math.prod(sizes[i] for i in over) if over else 1)
        return ids.tolist()
    m = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line)
    if m:
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", m.group(1))]
    return None


def _axes_of(groups: Iterable[list[int]], mesh_axes: list[str], mesh_shape: list[int]) -> tuple[str, ...]:
    total = math.prod(mesh_shape)
    varying: set[int] = set()
    for group in groups:
        coords = [np.unravel_index(d % total, mesh_shape) for d in group]
        for i in range(len(mesh_shape)):
            if len({c[i] for c in coords}) > 1:
                varying.add(i)
    return tuple(mesh_axes[i] for i in sorted(varying))


def _definitions(lines: list[str]) -> dict[str, tuple[str, str, str]]:
    """{op name: (result type, opcode, rest of the line)} of one computation."""
    out = {}
    for line in lines:
        op = _OP.match(line)
        if op:
            out[op.group(1)] = (op.group(2), op.group(3), op.group(4))
    return out


def _operands(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])


_PASS_THROUGH = ("bitcast", "copy", "reshape")


def _widened_from_bf16(name: str, defs: dict, comps: dict[str, list[str]], depth: int = 0) -> bool:
    """Is op `name` an f32 value converted from bf16 (possibly the root of a fusion, through bitcasts)?"""
    if name not in defs or depth > 8:
        return False
    rtype, opcode, rest = defs[name]
    if not rtype.lstrip("(").startswith("f32"):
        return False
    if opcode in _PASS_THROUGH:
        return any(_widened_from_bf16(a, defs, comps, depth + 1) for a in _operands(rest)[:1])
    if opcode == "convert":
        src = _operands(rest)[:1]
        return bool(src) and src[0] in defs and defs[src[0]][0].startswith("bf16")
    if opcode == "fusion":
        called = re.search(r"calls=%?([\w.\-]+)", rest)
        body = comps.get(called.group(1), []) if called else []
        root = next((line for line in body if line.lstrip().startswith("ROOT")), None)
        root_op = _OP.match(root) if root else None
        return bool(root_op) and _widened_from_bf16(root_op.group(1), _definitions(body), comps, depth + 1)
    return False


def _widened_share(rest: str, defs: dict, comps: dict[str, list[str]]) -> float:
    """Fraction of a collective's operand bytes that are bf16 data widened to f32. A reduction whose
    reducer the compiler cloned as `<name>_promoted` (from a bf16 one) counts as widened whole."""
    reducer = re.search(r"to_apply=%?([\w.\-]+)", rest)
    if reducer and reducer.group(1).endswith("_promoted"):
        return 1.0
    sizes = [(name, sum(_arrays(defs[name][0]))) for name in _operands(rest) if name in defs]
    total = sum(b for _, b in sizes)
    widened = sum(b for name, b in sizes if _widened_from_bf16(name, defs, comps))
    return widened / total if total else 0.0


def find_collectives(hlo: str, mesh_axes: list[str], mesh_shape: list[int]) -> tuple[list[Collective], list[str]]:
    """All collectives of an HLO module with their per-step execution counts and mesh axes."""
    comps, entry = parse_computations(hlo)
    if entry is None:
        return [], ["no ENTRY computation in the HLO text"]
    mult, notes = execution_counts(comps, entry)
    total = math.prod(mesh_shape)
    out = []
    for name, m in mult.items():
        defs = _definitions(comps.get(name, ()))
        for line in comps.get(name, ()):
            op = _OP.match(line)
            if not op:
                continue
            opcode = op.group(3)
            base = opcode[:-6] if opcode.endswith("-start") else opcode
            if base not in KINDS:
                continue
            sizes = _arrays(op.group(2))
            if opcode.endswith("-start") and base == "all-gather":
                payload = sum(sizes[len(sizes) // 2:])
            elif opcode.endswith("-start") and base == "collective-permute":
                payload = sizes[0] if sizes else 0
            else:
                payload = sum(sizes)
            groups = _groups(line, total) or [list(range(total))]
            if base == "collective-permute":
                n = 2
            else:
                n = max(len(g) for g in groups)
                if base == "reduce-scatter":
                    payload *= n
            out.append(Collective(base, float(payload), n, _axes_of(groups, mesh_axes, mesh_shape), m,
                                  _widened_share(op.group(4), defs, comps)))
    return out, notes


def mesh_collectives(hlo: str, mesh) -> list[Collective]:
    """`find_collectives` on `mesh`'s axes."""
    axes = list(mesh.axis_names)
    return find_collectives(hlo, axes, [int(mesh.shape[a]) for a in axes])[0]


def traffic_table(found: Iterable[Collective]) -> dict[str, dict[str, float]]:
    """{mesh axes label: {"traffic": bytes, "payload": bytes, "ops": executions, <kind>: bytes}} per
    device per step; the label joins the axes a group spans ("fsdp+expert")."""
    table: dict[str, dict[str, float]] = {}
    for c in found:
        label = "+".join(c.axes) or "none"
        row = table.setdefault(label, {"traffic": 0.0, "payload": 0.0, "ops": 0})
        row["traffic"] += c.traffic * c.count
        row["payload"] += c.payload * c.count
        row["ops"] += c.count
        row[c.kind] = row.get(c.kind, 0.0) + c.traffic * c.count
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["traffic"]))


def bf16_traffic(found: Iterable[Collective]) -> float:
    """Total traffic per device per step with compiler-widened bf16 data counted in bf16."""
    return float(sum(c.bf16_traffic * c.count for c in found))


def collective_traffic(hlo: str, mesh) -> dict[str, dict[str, float]]:
    """`traffic_table` of the collectives of `hlo` on `mesh`."""
    return traffic_table(mesh_collectives(hlo, mesh))
