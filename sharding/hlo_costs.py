"""FLOPs that compiled Pallas / Mosaic kernels declare, read from a compiled executable's HLO text.

XLA's `cost_analysis()` counts its own ops; a kernel (a `tpu_custom_call`) contributes the cost
estimate its author declared (`"cost_estimate":{"flops":...}` in the op's backend config).
`kernel_flops` sums those per step, weighted by the trip counts of the loops around each call.
"""

from __future__ import annotations

import re

from sharding.collectives import _OP, execution_counts, parse_computations

_DECLARED = re.compile(r'\\?"cost_estimate\\?":\{\\?"flops\\?":\\?"?(\d+)')


def kernel_flops(hlo: str) -> tuple[float, int]:
    """(declared FLOPs per step, kernel calls per step) of the custom-call kernels in `hlo`."""
    comps, entry = parse_computations(hlo)
    if entry is None:
        return 0.0, 0
    counts, _ = execution_counts(comps, entry)
    flops, calls = 0.0, 0
    for name, n in counts.items():
        for line in comps.get(name, ()):
            op = _OP.match(line)
            if not op or op.group(3) != "custom-call":
                continue
            m = _DECLARED.search(line)
            if m:
                flops += float(m.group(1)) * n
                calls += n
    return flops, calls
