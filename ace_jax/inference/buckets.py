"""Length and batch buckets: every shape the engine compiles for comes from a small fixed set."""

from __future__ import annotations

import dataclasses


def pow2_buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """Powers of two from `smallest` up to the first one >= `largest`."""
    if smallest < 1 or largest < 1:
        raise ValueError(f"bucket bounds must be positive, got {smallest}, {largest}")
    out, b = [], smallest
    while True:
        out.append(b)
        if b >= largest:
            return tuple(out)
        b *= 2


def quarter_octave(n: int) -> int:
    """n rounded up to a bucket of four per octave (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ...):
    at most 25% padding, and at most 4 x log2(n) shapes."""
    if n < 1:
        raise ValueError(f"a bucketed size must be positive, got {n}")
    step = 1 << max(0, n.bit_length() - 3)
    return -(-n // step) * step


def pick(n: int, buckets: tuple[int, ...], what: str) -> int:
    """The smallest bucket >= n; a clear error when n exceeds the largest."""
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{what} {n} exceeds the largest bucket {buckets[-1]} (buckets: {list(buckets)})")


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Batch sizes, prompt lengths and generation lengths the engine compiles for.

    The number of compiled generate functions is at most len(batch) * len(prompt) * len(generate)
    (times two when routed experts are asked for).
    """

    batch: tuple[int, ...] = pow2_buckets(1, 32)
    prompt: tuple[int, ...] = pow2_buckets(16, 2048)
    generate: tuple[int, ...] = pow2_buckets(16, 2048)

    @classmethod
    def powers_of_two(cls, max_batch: int = 32, max_prompt: int = 2048, max_new_tokens: int = 2048,
                      min_prompt: int = 16, min_generate: int = 16) -> "Buckets":
        return cls(pow2_buckets(1, max_batch), pow2_buckets(min_prompt, max_prompt),
                   pow2_buckets(min(min_generate, max_new_tokens), max_new_tokens))

    @property
    def max_batch(self) -> int:
        return self.batch[-1]

    def shape_for(self, rows: int, prompt_len: int, new_tokens: int) -> tuple[int, int, int]:
        """(batch, prompt, generate) buckets for a chunk of `rows` <= max_batch."""
        return (pick(rows, self.batch, "batch size"), pick(prompt_len, self.prompt, "prompt length"),
                pick(new_tokens, self.generate, "max_new_tokens"))
