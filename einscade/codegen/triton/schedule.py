"""Which key tiles a query tile visits, and in what order: the head of the kernel's loop.

The loop body only ever reads the key-tile index ``m1``; where it comes from is decided
here. ``DenseSchedule`` visits every tile ``0 .. M1 - 1``. A block-sparse schedule will
read ``m1`` from a per-query-tile index list instead (``for step in range(count):
m1 = tl.load(tiles_ptr + p1 * stride + step)``) without touching the body.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DenseSchedule:
    """Every key tile, in order."""

    loop_rank: str  # m1
    count: str  # the size symbol of the loop rank: M1

    def sizes(self) -> tuple[str, ...]:
        """Size symbols the loop head reads (kernel arguments)."""
        return (self.count,)

    def head(self) -> list[str]:
        """Lines opening the loop; the body that follows is indented one level deeper."""
        return [
            f"# iterate {self.loop_rank}: every key tile {self.loop_rank} = 0 .. {self.count} - 1",
            f"for {self.loop_rank} in range(0, {self.count}):",
        ]

    def body_prefix(self) -> list[str]:
        """Lines at the top of the loop body that define the tile index (none: the loop
        variable is the tile index)."""
        return []
