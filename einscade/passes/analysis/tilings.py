"""Tilings of a query or key grid: boxes of the grid axes, or ranges of row-major tokens.

Tiles are boxes of the grid (a tile with one extent per axis, in row-major order of their
origins, tails clipped) or, with one extent on a multi-axis grid, ranges of row-major tokens
(FlexAttention's 1-D blocks), which cover several boxes of the axes (:func:`flat_boxes`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from einscade.passes.analysis.block_layout import tile_counts
from einscade.passes.analysis.interval_core import Box, Interval
from einscade.passes.analysis.masks import Axes

Block = tuple[tuple[int, int], ...]  # a range of tile coordinates per tiled dimension


@dataclass(frozen=True, slots=True)
class Tiling:
    """Tiles of shape ``tile`` over coordinates of extents ``grid``: the grid axes
    themselves, or the row-major tokens of the axes (extents ``axes``) when flat."""

    grid: tuple[int, ...]
    tile: tuple[int, ...]
    axes: tuple[int, ...]

    @property
    def flat(self) -> bool:
        return len(self.grid) != len(self.axes)

    def origins(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(
            *(range(0, g, t) for g, t in zip(self.grid, self.tile, strict=True))
        )

    @property
    def count(self) -> int:
        return math.prod(tile_counts(self.grid, self.tile))

    def origin_at(self, index: int) -> tuple[int, ...]:
        """The origin of the ``index``-th tile in row-major order of the origins."""
        coords = []
        for n in reversed(tile_counts(self.grid, self.tile)):
            index, c = divmod(index, n)
            coords.append(c)
        return tuple(c * t for c, t in zip(reversed(coords), self.tile, strict=True))

    def shape(self, origin: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(min(t, g - o) for o, t, g in zip(origin, self.tile, self.grid, strict=True))

    def boxes(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> list[Box]:
        """The tile as boxes of axis coordinates (a token range may need several)."""
        if not self.flat:
            return [tuple(Interval(o, o + s - 1) for o, s in zip(origin, shape, strict=True))]
        return flat_boxes(origin[0], origin[0] + shape[0] - 1, self.axes)

    def blocks(self, box: Box) -> list[Block]:
        """Blocks of tile coordinates (a range per tiled dimension) covering the tiles that
        meet a box of axis coordinates."""
        if not self.flat:
            return [tuple((i.lo // t, i.hi // t) for i, t in zip(box, self.tile, strict=True))]
        return [
            ((lo // self.tile[0], hi // self.tile[0]),) for lo, hi in flat_ranges(box, self.axes)
        ]

    def block_boxes(self, block: Block) -> list[Box]:
        """The union of a block's tiles as boxes of axis coordinates."""
        lo = tuple(a * t for (a, _), t in zip(block, self.tile, strict=True))
        hi = tuple(
            min((b + 1) * t, g) for (_, b), t, g in zip(block, self.tile, self.grid, strict=True)
        )
        return self.boxes(lo, tuple(h - o for o, h in zip(lo, hi, strict=True)))


def flat_ranges(box: Box, axes: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """A box of a row-major grid as token ranges: one per row of the axes before the first
    axis whose inner axes the box spans whole."""
    k = len(axes) - 1
    while k > 0 and box[k] == Interval(0, axes[k] - 1):
        k -= 1
    strides = [math.prod(axes[j + 1 :]) for j in range(len(axes))]
    for row in itertools.product(*(range(i.lo, i.hi + 1) for i in box[:k])):
        base = sum(c * s for c, s in zip(row, strides[:k], strict=True))
        yield base + box[k].lo * strides[k], base + (box[k].hi + 1) * strides[k] - 1


def flat_boxes(lo: int, hi: int, axes: tuple[int, ...]) -> list[Box]:
    """Token range [lo, hi] of a row-major grid as boxes: a partial first row, whole rows,
    a partial last row (recursively per axis)."""
    if len(axes) == 1:
        return [(Interval(lo, hi),)]
    inner = math.prod(axes[1:])
    (top, first), (bottom, last) = divmod(lo, inner), divmod(hi, inner)
    if top == bottom:
        return [(Interval(top, top),) + b for b in flat_boxes(first, last, axes[1:])]
    head: list[Box] = []
    tail: list[Box] = []
    if first != 0:
        head = [(Interval(top, top),) + b for b in flat_boxes(first, inner - 1, axes[1:])]
        top += 1
    if last != inner - 1:
        tail = [(Interval(bottom, bottom),) + b for b in flat_boxes(0, last, axes[1:])]
        bottom -= 1
    middle: list[Box] = []
    if top <= bottom:
        middle = [(Interval(top, bottom),) + tuple(Interval(0, n - 1) for n in axes[1:])]
    return head + middle + tail


def make_tiling(side: str, axes: Axes, tile: tuple[int, ...]) -> Tiling:
    tile = tuple(tile)
    if any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in tile):
        raise ValueError(f"classify: {side}_tile must hold positive ints, got {tile}")
    if len(tile) == len(axes.extents):
        return Tiling(axes.extents, tile, axes.extents)
    if len(tile) == 1:
        return Tiling((math.prod(axes.extents),), tile, axes.extents)
    raise ValueError(
        f"classify: {side}_tile {tile} needs one extent per axis of {axes.names} "
        f"(a box) or a single extent (row-major token ranges)"
    )


def aligned_box(extents: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...] | None:
    """The box tile equal to ``tile``: itself when it has one extent per axis; for a range of
    ``n`` row-major tokens, the box ``(1, .., 1, c, E_k+1, .., E_last)`` when ``n = c *
    E_k+1 * .. * E_last`` with ``c`` dividing ``E_k`` (every range is then such a box, in
    row-major order of the boxes); else None."""
    if len(tile) == len(extents):
        return tile
    if len(tile) != 1:
        return None
    size, inner = tile[0], 1
    for k in range(len(extents) - 1, -1, -1):
        count = size // inner
        if size % inner == 0 and 1 <= count <= extents[k] and extents[k] % count == 0:
            return (1,) * k + (count,) + extents[k + 1 :]
        inner *= extents[k]
    return None
