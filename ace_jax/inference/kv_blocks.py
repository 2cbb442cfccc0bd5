"""Host-side bookkeeping of a paged KV pool: which blocks are free, how many references each holds."""

from __future__ import annotations


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold `tokens` slots."""
    return -(-tokens // block_size)


class BlockPool:
    """Free list and reference counts of `blocks` pool blocks; block 0 is trash, never handed out.

    A group's prompt blocks are referenced once per sample that reads them; a block returns to
    the free list when its last reference is released. `peak_used` is the high-water mark.
    """

    def __init__(self, blocks: int):
        if blocks < 2:
            raise ValueError(f"a KV pool needs at least 2 blocks (block 0 is trash), got {blocks}")
        self.blocks = blocks
        self._free = list(range(blocks - 1, 0, -1))
        self._refs = [0] * blocks
        self.peak_used = 0

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.blocks - 1 - len(self._free)

    def allocate(self, count: int) -> list[int]:
        """`count` fresh blocks with one reference each; ValueError when the pool is short."""
        if count > len(self._free):
            raise ValueError(f"KV pool exhausted: {count} blocks asked, {len(self._free)} free of {self.blocks}")
        out = [self._free.pop() for _ in range(count)]
        for b in out:
            self._refs[b] = 1
        self.peak_used = max(self.peak_used, self.used)
        return out

    def share(self, blocks: list[int], times: int = 1) -> None:
        """Add `times` references to each of `blocks`."""
        for b in blocks:
            self._refs[b] += times

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each of `blocks`; unreferenced ones become free."""
        for b in blocks:
            if self._refs[b] <= 0:
                raise ValueError(f"KV block {b} released more often than referenced")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)
