"""Block classification: for each query tile, the key tiles that may hold allowed (query,
key) pairs, each marked full (every pair allowed: no element mask needed) or partial.

Query tiles are boxes of the query grid (``query_tile`` with one extent per axis, tiles in
row-major order of their origins, tails clipped) or, with one extent on a multi-axis grid,
ranges of row-major tokens (FlexAttention's 1-D blocks). Key tiles depend on ``key_mode``:

- ``"grid"``: the fixed grid of key tiles of shape ``key_tile`` (boxes or token ranges, the
  same way). The key region of a query tile (:meth:`BoxEvaluator.key_region`) names blocks
  of candidate tiles directly; a block is judged whole first (TRUE or FALSE holds for all
  its tiles, so a run of full or empty tiles costs one evaluation) and halved otherwise.
  The cost grows with the visited tiles, never with P * M.
- ``"box"``: one key box per query tile, the bounding box of its key region with the
  innermost extent padded up to a multiple of ``pad`` (kept inside the grid). Boxes of a
  union (an ``or``, e.g. attention sinks ``m < sinks``) stay separate small tiles as long as
  merging them would cost more keys.

Sound by construction (and tested against brute force): a tile called full has every pair
allowed, and every allowed pair lies in a visited tile.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from einscade.passes.analysis.intervals import (
    FALSE,
    TRUE,
    UNKNOWN,
    Box,
    BoxEvaluator,
    Interval,
    hull,
    intersect_box,
)
from einscade.passes.analysis.masks import Axes, BoundMask, Mask, Params, Sizes

KEY_MODES = ("grid", "box")
Block = tuple[tuple[int, int], ...]  # a range of tile coordinates per tiled dimension


@dataclass(frozen=True, slots=True)
class KeyTile:
    """A key tile of one query tile: its origin and shape in the layout's key coordinates."""

    origin: tuple[int, ...]
    shape: tuple[int, ...]
    full: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class BlockMaskArrays(NamedTuple):
    """FlexAttention's BlockMask data for one (batch, head): int32, partial and full blocks
    listed first in increasing order, the other block indices after them."""

    kv_num_blocks: torch.Tensor  # [Qblk]
    kv_indices: torch.Tensor  # [Qblk, KVblk]
    full_kv_num_blocks: torch.Tensor  # [Qblk]
    full_kv_indices: torch.Tensor  # [Qblk, KVblk]


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """The classified tiles of one mask.

    Tile origins and shapes are in the coordinates named by ``query_axes`` / ``key_axes``
    (the grid axes, or the flat rank for row-major token tiles), whose extents are
    ``query_grid`` / ``key_grid``. ``num_empty`` counts, in grid mode, the tile pairs not
    visited (no allowed pair); in box mode, the candidate boxes found empty.
    ``computed_elements`` sums query tile size x key tile size over the visited tiles
    (padding included); ``useful_elements`` is the exact number of allowed pairs, when
    counted (``classify(..., count_useful=True)``).
    """

    key_mode: str
    query_axes: tuple[str, ...]
    query_grid: tuple[int, ...]
    query_tile: tuple[int, ...]
    query_origins: tuple[tuple[int, ...], ...]
    query_shapes: tuple[tuple[int, ...], ...]
    key_axes: tuple[str, ...]
    key_grid: tuple[int, ...]
    key_tile: tuple[int, ...] | None
    key_tiles: tuple[tuple[KeyTile, ...], ...]
    num_empty: int
    num_partial: int
    num_full: int
    computed_elements: int
    useful_elements: int | None = None

    @property
    def num_visited(self) -> int:
        return self.num_partial + self.num_full

    @property
    def work_ratio(self) -> float | None:
        """Computed over useful elements (None until useful elements are counted)."""
        if not self.useful_elements:
            return None
        return self.computed_elements / self.useful_elements

    def query_size(self, index: int) -> int:
        return math.prod(self.query_shapes[index])

    def work_per_query_tile(self) -> tuple[int, ...]:
        """Computed elements (padding included) of each query tile, in tile order."""
        return tuple(
            self.query_size(i) * sum(t.size for t in tiles)
            for i, tiles in enumerate(self.key_tiles)
        )

    def tile_work(self) -> Iterator[tuple[int, KeyTile, int]]:
        """(query tile index, key tile, elements computed) for every visited tile."""
        for i, tiles in enumerate(self.key_tiles):
            for tile in tiles:
                yield i, tile, self.query_size(i) * tile.size

    def query_tokens(self, index: int) -> torch.Tensor:
        """Flat (row-major) token indices of a query tile, in row-major order of the tile."""
        return _tokens(self.query_origins[index], self.query_shapes[index], self.query_grid)

    def key_tokens(self, tile: KeyTile) -> torch.Tensor:
        """Flat (row-major) token indices of a key tile."""
        return _tokens(tile.origin, tile.shape, self.key_grid)

    def key_tile_index(self, tile: KeyTile) -> int:
        """Row-major index of a grid-mode key tile in the grid of key tiles."""
        assert self.key_tile is not None
        counts = _counts(self.key_grid, self.key_tile)
        index = 0
        for origin, size, count in zip(tile.origin, self.key_tile, counts, strict=True):
            index = index * count + origin // size
        return index

    def to_block_mask_arrays(self) -> BlockMaskArrays:
        """FlexAttention-style arrays (grid key mode; with 1-D token tiles on both sides these
        are exactly ``create_block_mask``'s for one batch and head)."""
        if self.key_mode != "grid" or self.key_tile is None:
            raise ValueError("to_block_mask_arrays needs key_mode='grid': box tiles have no index")
        num_kv = math.prod(_counts(self.key_grid, self.key_tile))
        partial = torch.zeros(len(self.key_tiles), num_kv, dtype=torch.bool)
        full = torch.zeros_like(partial)
        for i, tiles in enumerate(self.key_tiles):
            for tile in tiles:
                (full if tile.full else partial)[i, self.key_tile_index(tile)] = True
        return BlockMaskArrays(*_ordered(partial), *_ordered(full))


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts per row and indices with the chosen blocks first (FlexAttention's order)."""
    order = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
    return dense.sum(-1).to(torch.int32), order.to(torch.int32)


def _tokens(origin: tuple[int, ...], shape: tuple[int, ...], grid: tuple[int, ...]):  # type: ignore[no-untyped-def]
    tokens = torch.zeros((), dtype=torch.long)
    for axis, (o, s) in enumerate(zip(origin, shape, strict=True)):
        stride = math.prod(grid[axis + 1 :])
        tokens = tokens.unsqueeze(-1) + torch.arange(o, o + s) * stride
    return tokens.reshape(-1)


def _counts(grid: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-g // t) for g, t in zip(grid, tile, strict=True))


# -- tilings -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tiling:
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

    def shape(self, origin: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(min(t, g - o) for o, t, g in zip(origin, self.tile, self.grid, strict=True))

    def boxes(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> list[Box]:
        """The tile as boxes of axis coordinates (a token range may need several)."""
        if not self.flat:
            return [tuple(Interval(o, o + s - 1) for o, s in zip(origin, shape, strict=True))]
        return _flat_boxes(origin[0], origin[0] + shape[0] - 1, self.axes)

    def blocks(self, box: Box) -> list[Block]:
        """Blocks of tile coordinates (a range per tiled dimension) covering the tiles that
        meet a box of axis coordinates."""
        if not self.flat:
            return [tuple((i.lo // t, i.hi // t) for i, t in zip(box, self.tile, strict=True))]
        return [
            ((lo // self.tile[0], hi // self.tile[0]),) for lo, hi in _flat_ranges(box, self.axes)
        ]

    def block_boxes(self, block: Block) -> list[Box]:
        """The union of a block's tiles as boxes of axis coordinates."""
        lo = tuple(a * t for (a, _), t in zip(block, self.tile, strict=True))
        hi = tuple(
            min((b + 1) * t, g) for (_, b), t, g in zip(block, self.tile, self.grid, strict=True)
        )
        return self.boxes(lo, tuple(h - o for o, h in zip(lo, hi, strict=True)))


def _flat_ranges(box: Box, axes: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """A box of a row-major grid as token ranges: one per row of the axes before the first
    axis whose inner axes the box spans whole."""
    k = len(axes) - 1
    while k > 0 and box[k] == Interval(0, axes[k] - 1):
        k -= 1
    strides = [math.prod(axes[j + 1 :]) for j in range(len(axes))]
    for row in itertools.product(*(range(i.lo, i.hi + 1) for i in box[:k])):
        base = sum(c * s for c, s in zip(row, strides[:k], strict=True))
        yield base + box[k].lo * strides[k], base + (box[k].hi + 1) * strides[k] - 1


def _flat_boxes(lo: int, hi: int, axes: tuple[int, ...]) -> list[Box]:
    """Token range [lo, hi] of a row-major grid as boxes: a partial first row, whole rows,
    a partial last row (recursively per axis)."""
    if len(axes) == 1:
        return [(Interval(lo, hi),)]
    inner = math.prod(axes[1:])
    (top, first), (bottom, last) = divmod(lo, inner), divmod(hi, inner)
    if top == bottom:
        return [(Interval(top, top),) + b for b in _flat_boxes(first, last, axes[1:])]
    head: list[Box] = []
    tail: list[Box] = []
    if first != 0:
        head = [(Interval(top, top),) + b for b in _flat_boxes(first, inner - 1, axes[1:])]
        top += 1
    if last != inner - 1:
        tail = [(Interval(bottom, bottom),) + b for b in _flat_boxes(0, last, axes[1:])]
        bottom -= 1
    middle: list[Box] = []
    if top <= bottom:
        middle = [(Interval(top, bottom),) + tuple(Interval(0, n - 1) for n in axes[1:])]
    return head + middle + tail


def _tiling(side: str, axes: Axes, tile: tuple[int, ...]) -> _Tiling:
    tile = tuple(tile)
    if any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in tile):
        raise ValueError(f"classify: {side}_tile must hold positive ints, got {tile}")
    if len(tile) == len(axes.extents):
        return _Tiling(axes.extents, tile, axes.extents)
    if len(tile) == 1:
        return _Tiling((math.prod(axes.extents),), tile, axes.extents)
    raise ValueError(
        f"classify: {side}_tile {tile} needs one extent per axis of {axes.names} "
        f"(a box) or a single extent (row-major token ranges)"
    )


# -- classification ----------------------------------------------------------------------


def classify(
    mask: Mask,
    sizes: Sizes | None,
    params: Params | None,
    lookups: dict[str, torch.Tensor] | None,
    query_tile: tuple[int, ...],
    key_tile: tuple[int, ...] | None = None,
    *,
    key_mode: str = "grid",
    pad: int = 16,
    at: dict[str, int] | None = None,
    split_limit: int = 16,
    count_useful: bool = False,
) -> BlockLayout:
    """Classify the (query tile, key tile) pairs of ``mask`` as empty, partial or full.

    ``sizes``/``params``/``lookups``/``at`` bind the mask (:meth:`Mask.bind`).
    ``key_mode="grid"`` needs ``key_tile``; ``"box"`` ignores it and pads the innermost
    key extent to a multiple of ``pad``. ``split_limit``: see intervals.py. With
    ``count_useful`` the allowed pairs of every partial tile are counted by brute force
    (cost: the visited partial tiles' elements).
    """
    if key_mode not in KEY_MODES:
        raise ValueError(f"classify: key_mode must be one of {KEY_MODES}, got {key_mode!r}")
    bound = mask.bind(sizes, params, lookups, at)
    evaluator = BoxEvaluator(bound.predicate, bound.query, bound.key, bound.tables, split_limit)
    queries = _tiling("query", bound.query, query_tile)
    keys: _Tiling | None = None
    if key_mode == "grid":
        if key_tile is None:
            raise ValueError("classify: key_mode='grid' needs key_tile")
        keys = _tiling("key", bound.key, key_tile)
    elif pad < 1:
        raise ValueError(f"classify: pad must be >= 1, got {pad}")
    origins, shapes, rows, dropped = [], [], [], 0
    for origin in queries.origins():
        shape = queries.shape(origin)
        qboxes = queries.boxes(origin, shape)
        if keys is not None:
            tiles, empty = _grid_row(evaluator, keys, qboxes)
        else:
            tiles, empty = _box_row(evaluator, bound.key, qboxes, pad)
        origins.append(origin)
        shapes.append(shape)
        rows.append(tiles)
        dropped += empty
    layout = _layout(bound, queries, keys, key_mode, origins, shapes, rows, dropped)
    if count_useful:
        layout = dataclasses.replace(layout, useful_elements=count_allowed(layout, bound))
    return layout


def _layout(bound, queries, keys, key_mode, origins, shapes, rows, dropped) -> BlockLayout:  # type: ignore[no-untyped-def]
    visited = [t for row in rows for t in row]
    num_full = sum(t.full for t in visited)
    computed = sum(
        math.prod(s) * sum(t.size for t in row) for s, row in zip(shapes, rows, strict=True)
    )
    if keys is not None:
        dropped = len(origins) * math.prod(_counts(keys.grid, keys.tile)) - len(visited)
    key_axes = bound.key.names if keys is None or not keys.flat else (bound.key.flat,)
    return BlockLayout(
        key_mode=key_mode,
        query_axes=(bound.query.flat,) if queries.flat else bound.query.names,
        query_grid=queries.grid,
        query_tile=queries.tile,
        query_origins=tuple(origins),
        query_shapes=tuple(shapes),
        key_axes=key_axes,
        key_grid=bound.key.extents if keys is None else keys.grid,
        key_tile=None if keys is None else keys.tile,
        key_tiles=tuple(rows),
        num_empty=dropped,
        num_partial=len(visited) - num_full,
        num_full=num_full,
        computed_elements=computed,
    )


def _grid_row(evaluator: BoxEvaluator, keys: _Tiling, qboxes: list[Box]):  # type: ignore[no-untyped-def]
    """Key tiles of one query tile in grid mode (the empty count is derived later)."""
    found: dict[tuple[int, ...], bool] = {}
    for box in evaluator.key_region(qboxes):
        for block in keys.blocks(box):
            _classify_block(evaluator, keys, qboxes, block, found)
    origins = {coords: _origin(coords, keys) for coords in found}
    tiles = [KeyTile(origins[c], keys.shape(origins[c]), full) for c, full in found.items()]
    return tuple(sorted(tiles, key=lambda t: t.origin)), 0


_SMALL_BLOCK = 4  # tiles; smaller blocks are classified tile by tile


def _classify_block(evaluator, keys, qboxes, block, found) -> None:  # type: ignore[no-untyped-def]
    """Tiles of a block of tile coordinates into ``found`` (coordinates -> full). A block of
    more than a few tiles is first judged whole: TRUE or FALSE there holds for each of its
    tiles, so runs of full or empty tiles cost one evaluation; else it is halved."""
    count = math.prod(b - a + 1 for a, b in block)
    if count > _SMALL_BLOCK:
        truth = evaluator.truth(qboxes, keys.block_boxes(block))
        if truth == TRUE:
            found.update(
                dict.fromkeys(itertools.product(*(range(a, b + 1) for a, b in block)), True)
            )
        if truth != UNKNOWN:
            return
        axis = max(range(len(block)), key=lambda d: block[d][1] - block[d][0])
        a, b = block[axis]
        for half in ((a, (a + b) // 2), ((a + b) // 2 + 1, b)):
            part = block[:axis] + (half,) + block[axis + 1 :]
            _classify_block(evaluator, keys, qboxes, part, found)
        return
    for coords in itertools.product(*(range(a, b + 1) for a, b in block)):
        if coords not in found:
            origin = _origin(coords, keys)
            truth = evaluator.truth(qboxes, keys.boxes(origin, keys.shape(origin)))
            if truth != FALSE:
                found[coords] = truth == TRUE


def _origin(coords: tuple[int, ...], keys: _Tiling) -> tuple[int, ...]:
    return tuple(c * t for c, t in zip(coords, keys.tile, strict=True))


def _box_row(evaluator: BoxEvaluator, key: Axes, qboxes: list[Box], pad: int):  # type: ignore[no-untyped-def]
    """Key boxes of one query tile in box mode, and how many candidates were empty."""
    boxes = _cluster([_pad(b, key.extents, pad) for b in evaluator.key_region(qboxes)], key, pad)
    tiles = []
    for box in boxes:
        truth = evaluator.truth(qboxes, [box])
        if truth != FALSE:
            origin = tuple(i.lo for i in box)
            tiles.append(KeyTile(origin, tuple(i.hi - i.lo + 1 for i in box), truth == TRUE))
    return tuple(sorted(tiles, key=lambda t: t.origin)), len(boxes) - len(tiles)


def _pad(box: Box, extents: tuple[int, ...], pad: int) -> Box:
    """Innermost extent up to a multiple of ``pad``, shifted back inside the grid."""
    last, length = box[-1], extents[-1]
    padded = min(-(-(last.hi - last.lo + 1) // pad) * pad, length)
    lo = max(0, min(last.lo, length - padded))
    return box[:-1] + (Interval(lo, lo + padded - 1),)


def _volume(box: Box) -> int:
    return math.prod(i.hi - i.lo + 1 for i in box)


def _cluster(boxes: list[Box], key: Axes, pad: int) -> list[Box]:
    """Merge padded boxes that overlap or whose padded hull costs no more keys than both."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for a, b in itertools.combinations(range(len(boxes)), 2):
            joined = _pad(hull(boxes[a], boxes[b]), key.extents, pad)
            cheaper = _volume(joined) <= _volume(boxes[a]) + _volume(boxes[b])
            if cheaper or intersect_box(boxes[a], boxes[b]) is not None:
                boxes = [x for k, x in enumerate(boxes) if k not in (a, b)] + [joined]
                merged = True
                break
    return boxes


def count_allowed(layout: BlockLayout, bound: BoundMask) -> int:
    """Exact number of allowed pairs: full tiles by size, partial tiles by brute force over
    their elements (visited tiles hold every allowed pair and do not overlap)."""
    total = 0
    for i, tiles in enumerate(layout.key_tiles):
        queries = layout.query_tokens(i)
        for tile in tiles:
            if tile.full:
                total += len(queries) * tile.size
            else:
                total += int(bound.evaluate(queries, layout.key_tokens(tile)).sum())
    return total
