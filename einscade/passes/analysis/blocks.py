"""Block classification: for each query tile, the key tiles that may hold allowed (query,
key) pairs, each marked full (every pair allowed: no element mask needed) or partial.

Query tiles are boxes of the query grid (``query_tile`` with one extent per axis, tiles in
row-major order of their origins, tails clipped) or, with one extent on a multi-axis grid,
ranges of row-major tokens (FlexAttention's 1-D blocks). Key tiles depend on ``key_mode``:

- ``"grid"``: the fixed grid of key tiles of shape ``key_tile`` (boxes or token ranges, the
  same way). The key region of a query tile (:meth:`BoxEvaluator.key_region`) names blocks
  of candidate tiles directly; tiles outside its fail region (keys some query may refuse,
  :meth:`BoxEvaluator.fail_region`) are full without evaluation, and a run of the others is
  judged whole first (TRUE or FALSE holds for all its tiles) and halved otherwise. The cost
  grows with the visited tiles, never with P * M.
- ``"box"``: one key box per query tile, the bounding box of its key region with the
  innermost extent padded up to a multiple of ``pad`` (kept inside the grid). Boxes of a
  union (an ``or``, e.g. attention sinks ``m < sinks``) stay separate small tiles as long as
  merging them would cost more keys. With ``split`` (1-D keys) a partial box is cut into a
  partial head, a full core and a partial tail.

A mask that is a conjunction of per-axis conditions (NATTEN windows, HaloNet, blocked or
folded grid attention) is classified axis by axis over box tiles: a tile is the product of
per-axis answers, which are few and cached (:class:`Classifier`). :class:`Classifier` keeps
one evaluator for many tilings (layout selection) and classifies samples of rows.

Sound by construction (and tested against brute force): a tile called full has every pair
allowed, and every allowed pair lies in a visited tile.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
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
    meets,
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
    size: int = dataclasses.field(init=False, repr=False, compare=False)  # keys in the tile

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", math.prod(self.shape))


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

    @property
    def count(self) -> int:
        return math.prod(_counts(self.grid, self.tile))

    def origin_at(self, index: int) -> tuple[int, ...]:
        """The origin of the ``index``-th tile in row-major order of the origins."""
        coords = []
        for n in reversed(_counts(self.grid, self.tile)):
            index, c = divmod(index, n)
            coords.append(c)
        return tuple(c * t for c, t in zip(reversed(coords), self.tile, strict=True))

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
    split: int = 0,
) -> BlockLayout:
    """Classify the (query tile, key tile) pairs of ``mask`` as empty, partial or full.

    ``sizes``/``params``/``lookups``/``at`` bind the mask (:meth:`Mask.bind`).
    ``key_mode="grid"`` needs ``key_tile``; ``"box"`` ignores it and pads the innermost
    key extent to a multiple of ``pad``. ``split_limit``: see intervals.py. With
    ``count_useful`` the allowed pairs of every partial tile are counted by brute force
    (cost: the visited partial tiles' elements). ``split`` (box mode, 1-D keys): see
    :meth:`Classifier.layout`.
    """
    bound = mask.bind(sizes, params, lookups, at)
    layout = Classifier(bound, split_limit).layout(
        query_tile, key_tile, key_mode=key_mode, pad=pad, split=split
    )
    if count_useful:
        layout = dataclasses.replace(layout, useful_elements=count_allowed(layout, bound))
    return layout


Row = tuple[int, tuple[KeyTile, ...]]  # (query tile size, its visited key tiles)


class Classifier:
    """One bound mask and its :class:`BoxEvaluator`, for classifying many tilings: the
    evaluator's caches (per query piece) are shared, so a second tiling costs less.

    Per query tile, two regions decide most tiles without evaluating them: the keys some
    query may allow (``key_region``: a key tile outside is empty) and the keys some query
    may not allow (``fail_region``: a key tile outside is full). Only the tiles meeting both
    are evaluated (in grid mode a run of them is judged whole first, then halved).
    """

    def __init__(self, bound: BoundMask, split_limit: int = 16):
        self.bound = bound
        self.evaluator = BoxEvaluator(
            bound.predicate, bound.query, bound.key, bound.tables, split_limit
        )
        self._axes: dict[tuple, object] = {}  # per-axis answers of the product path
        self._tiles: dict[object, dict] = {}  # type: ignore[type-arg]

    def layout(
        self,
        query_tile: tuple[int, ...],
        key_tile: tuple[int, ...] | None = None,
        *,
        key_mode: str = "grid",
        pad: int = 16,
        split: int = 0,
    ) -> BlockLayout:
        """The classified layout of one tiling (see :func:`classify`).

        ``split`` > 0 (box mode, one key axis): a partial key box is cut into a partial head,
        a full core (the longest run of keys no query may refuse, at least ``2 * split``
        keys) and a partial tail, each a multiple of ``split`` keys from the box start but
        the tail; the element mask is then needed on the head and tail only.
        """
        queries, keys = self._tilings(query_tile, key_tile, key_mode, pad, split)
        rows, origins, shapes, dropped = [], [], [], 0
        cache = self._tile_cache(keys)
        for origin in queries.origins():
            shape = queries.shape(origin)
            judge = self.evaluator.truth
            tiles, empty = self._row(queries, keys, origin, shape, pad, split, cache, judge, True)
            origins.append(origin)
            shapes.append(shape)
            rows.append(tiles)
            dropped += empty
        return _layout(self.bound, queries, keys, key_mode, origins, shapes, rows, dropped)

    def rows(
        self,
        query_tile: tuple[int, ...],
        key_tile: tuple[int, ...] | None,
        indices: list[int],
        *,
        key_mode: str = "grid",
        pad: int = 16,
        split: int = 0,
        evaluate: bool = True,
        refusals: bool = True,
    ) -> list[Row]:
        """(query tile size, key tiles) of the query tiles at ``indices`` (row-major order of
        their origins, as in :meth:`layout`): a sample for estimating a tiling's cost.
        ``evaluate=False`` decides from the two regions alone: a tile meeting both is called
        partial unevaluated (sound, but it may be empty or full), which costs no truth
        evaluation; ``refusals=False`` also skips the fail region (every visited tile is then
        partial), the cheapest glance."""
        queries, keys = self._tilings(query_tile, key_tile, key_mode, pad, split)
        found, cache = [], self._tile_cache(keys)  # type: ignore[var-annotated]
        for index in indices:
            origin = queries.origin_at(index)
            shape = queries.shape(origin)
            judge = self.evaluator.truth if evaluate else _partial
            tiles, _ = self._row(queries, keys, origin, shape, pad, split, cache, judge, refusals)
            found.append((math.prod(shape), tiles))
        return found

    def _tile_cache(self, keys: _Tiling | None) -> dict:  # type: ignore[type-arg]
        """KeyTile objects of one key tiling, shared by every row and call (immutable)."""
        return self._tiles.setdefault(None if keys is None else (keys.grid, keys.tile), {})

    def query_tile_count(self, query_tile: tuple[int, ...]) -> int:
        return _tiling("query", self.bound.query, query_tile).count

    def _tilings(self, query_tile, key_tile, key_mode, pad, split):  # type: ignore[no-untyped-def]
        if key_mode not in KEY_MODES:
            raise ValueError(f"classify: key_mode must be one of {KEY_MODES}, got {key_mode!r}")
        queries = _tiling("query", self.bound.query, query_tile)
        if key_mode == "box":
            if pad < 1:
                raise ValueError(f"classify: pad must be >= 1, got {pad}")
            if split < 0:
                raise ValueError(f"classify: split must be >= 0, got {split}")
            return queries, None
        if key_tile is None:
            raise ValueError("classify: key_mode='grid' needs key_tile")
        return queries, _tiling("key", self.bound.key, key_tile)

    def _row(self, queries, keys, origin, shape, pad, split, cache, judge, refusals):  # type: ignore[no-untyped-def]
        if self._is_product(queries, keys):
            found = self._product_row(queries, keys, origin, shape, pad, cache)
            if found is not None:
                return found
        qboxes = queries.boxes(origin, shape)
        region = self.evaluator.key_region(qboxes)
        if not region:
            return (), 0
        # Keys some query may refuse; without looking, every key may be.
        fail = self.evaluator.fail_region(qboxes) if refusals else [self.bound.key.full_box()]
        if keys is None:
            return _box_row(judge, self.bound.key, qboxes, region, fail, pad, split)
        return _grid_row(judge, keys, qboxes, region, fail, cache), 0

    # -- product masks ---------------------------------------------------------------------
    # A mask that is a conjunction of per-axis conditions (BoxEvaluator.axis_groups) over box
    # tiles is classified axis by axis: a key box is the product of per-axis intervals, full
    # iff full on every axis, empty iff empty on one. Per-axis answers are cached, so a row
    # costs a few lookups (the 1M-token 3-D neighborhood has 16384 rows, 80 distinct axes).

    def _is_product(self, queries: _Tiling, keys: _Tiling | None) -> bool:
        return (
            len(queries.grid) > 1
            and not queries.flat
            and (keys is None or not keys.flat)
            and self.evaluator.axis_groups() is not None
        )

    def _product_row(self, queries, keys, origin, shape, pad, cache):  # type: ignore[no-untyped-def]
        """The row of a query box on the product path, or None where an axis's region is a
        union of intervals in box mode (the general path merges those)."""
        spans = [Interval(o, o + n - 1) for o, n in zip(origin, shape, strict=True)]
        if keys is None:
            found = [self._axis_box(a, span, pad) for a, span in enumerate(spans)]
            if any(f is None for f in found):
                return (), 0
            if any(f == "union" for f in found):
                return None
            if any(truth == FALSE for _, truth in found):
                return (), 1
            box = tuple(b for b, _ in found)
            full = all(truth == TRUE for _, truth in found)
            tile = KeyTile(tuple(i.lo for i in box), tuple(i.hi - i.lo + 1 for i in box), full)
            return (tile,), 0
        lists = [self._axis_tiles(a, span, keys) for a, span in enumerate(spans)]
        tiles = (
            _key_tile(keys, tuple(j for j, _ in combo), all(f for _, f in combo), cache)
            for combo in itertools.product(*lists)
        )
        return tuple(tiles), 0

    def _axis_box(self, axis: int, span: Interval, pad: int):  # type: ignore[no-untyped-def]
        """(key interval, truth) of one axis in box mode; None if no key; "union" if the
        region is several intervals."""
        last = axis == len(self.bound.key.extents) - 1
        key = ("box", axis, span, pad if last else 1)
        if key not in self._axes:
            self._axes[key] = self._axis_box_uncached(axis, span, pad if last else 1)
        return self._axes[key]

    def _axis_box_uncached(self, axis: int, span: Interval, pad: int):  # type: ignore[no-untyped-def]
        parts = self.evaluator.axis_region(axis, span)
        if len(parts) != 1:
            return None if not parts else "union"
        (box,) = _pad((parts[0],), (self.bound.key.extents[axis],), pad)
        refused = self.evaluator.axis_region(axis, span, fail=True)
        if not any(meets((box,), (r,)) for r in refused):
            return box, TRUE
        return box, self.evaluator.axis_truth(axis, span, box)

    def _axis_tiles(self, axis: int, span: Interval, keys: _Tiling) -> list[tuple[int, bool]]:
        """(key tile index, full) along one axis in grid mode, in increasing order."""
        size, extent = keys.tile[axis], keys.grid[axis]
        key = ("grid", axis, span, size)
        found = self._axes.get(key)
        if found is not None:
            return found
        refused = self.evaluator.axis_region(axis, span, fail=True)
        indices = {
            j for part in self.evaluator.axis_region(axis, span)
            for j in range(part.lo // size, part.hi // size + 1)
        }  # fmt: skip
        found = []
        for j in sorted(indices):
            tile = Interval(j * size, min((j + 1) * size, extent) - 1)
            truth = TRUE
            if any(meets((tile,), (r,)) for r in refused):
                truth = self.evaluator.axis_truth(axis, span, tile)
            if truth != FALSE:
                found.append((j, truth == TRUE))
        self._axes[key] = found
        return found


def _partial(qboxes: list[Box], kboxes: list[Box]) -> int:
    """The judgement of a tile left unevaluated: partial (always sound)."""
    return UNKNOWN


_FULL, _SIZE = operator.attrgetter("full"), operator.attrgetter("size")


def _layout(bound, queries, keys, key_mode, origins, shapes, rows, dropped) -> BlockLayout:  # type: ignore[no-untyped-def]
    num_visited = num_full = computed = 0
    for shape, row in zip(shapes, rows, strict=True):
        num_visited += len(row)
        num_full += sum(map(_FULL, row))
        computed += math.prod(shape) * sum(map(_SIZE, row))
    if keys is not None:
        dropped = len(origins) * keys.count - num_visited
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
        num_partial=num_visited - num_full,
        num_full=num_full,
        computed_elements=computed,
    )


# -- grid mode ---------------------------------------------------------------------------


def _grid_row(judge, keys: _Tiling, qboxes: list[Box], region, refused, cache: dict):  # type: ignore[no-untyped-def]
    """Key tiles of one query tile in grid mode, in increasing order. ``region``: keys some
    query may allow; ``refused``: keys some query may refuse. ``cache`` shares the KeyTile
    objects of one tiling between rows (they are immutable)."""
    fail = [b for box in refused for b in keys.blocks(box)]
    if len(keys.tile) == 1:
        return _row_1d(judge, keys, qboxes, region, fail, cache)
    found: dict[tuple[int, ...], bool] = {}
    for box in region:
        for block in keys.blocks(box):
            for coords in itertools.product(*(range(a, b + 1) for a, b in block)):
                if coords not in found:
                    _one_tile(judge, keys, qboxes, coords, fail, found)
    return tuple(_key_tile(keys, coords, found[coords], cache) for coords in sorted(found))


def _row_1d(judge, keys, qboxes, region, fail, cache) -> tuple[KeyTile, ...]:  # type: ignore[no-untyped-def]
    """1-D key tiles: the tile ranges of the region minus those meeting the fail region are
    full (sliced from one shared tuple); each run of the others is classified as a block
    (judged whole, then halved)."""
    plus = _union([b[0] for box in region for b in keys.blocks(box)])
    minus = _union([b[0] for b in fail])
    parts: list[tuple[KeyTile, ...]] = []
    for lo, hi in plus:
        start = lo
        for a, b in minus:
            if b < start or a > hi:
                continue
            if a > start:
                parts.append(_full_run(keys, start, a - 1, cache))
            run = (max(a, start), min(b, hi))
            found: dict[tuple[int, ...], bool] = {}
            _classify_block(judge, keys, qboxes, (run,), found)
            parts.append(tuple(_key_tile(keys, c, found[c], cache) for c in sorted(found)))
            start = run[1] + 1
        if start <= hi:
            parts.append(_full_run(keys, start, hi, cache))
    return parts[0] if len(parts) == 1 else tuple(itertools.chain.from_iterable(parts))


_SHARED_RUN = 1 << 16  # 1-D key tilings up to this many tiles keep one tuple of full tiles


def _full_run(keys: _Tiling, lo: int, hi: int, cache: dict) -> tuple[KeyTile, ...]:  # type: ignore[type-arg]
    if keys.count > _SHARED_RUN:
        return tuple(_key_tile(keys, (j,), True, cache) for j in range(lo, hi + 1))
    every = cache.get("full")
    if every is None:
        every = cache["full"] = tuple(_key_tile(keys, (j,), True, cache) for j in range(keys.count))
    return every[lo : hi + 1]


def _union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges covering the given ones (touching ranges joined)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _one_tile(judge, keys, qboxes, coords, fail, found) -> None:  # type: ignore[no-untyped-def]
    """A tile outside the fail region is full (no query refuses any of its keys; it is not
    empty: an empty tile lies in the fail region); others are evaluated."""
    if not any(all(a <= c <= b for c, (a, b) in zip(coords, blk, strict=True)) for blk in fail):
        found[coords] = True
        return
    origin = _origin(coords, keys)
    truth = judge(qboxes, keys.boxes(origin, keys.shape(origin)))
    if truth != FALSE:
        found[coords] = truth == TRUE


def _key_tile(keys: _Tiling, coords: tuple[int, ...], full: bool, cache: dict) -> KeyTile:  # type: ignore[type-arg]
    tile = cache.get((coords, full))
    if tile is None:
        origin = _origin(coords, keys)
        tile = cache[(coords, full)] = KeyTile(origin, keys.shape(origin), full)
    return tile


_SMALL_BLOCK = 4  # tiles; smaller blocks are classified tile by tile


def _classify_block(judge, keys, qboxes, block, found) -> None:  # type: ignore[no-untyped-def]
    """Tiles of a block of tile coordinates into ``found`` (coordinates -> full). A block of
    more than a few tiles is first judged whole: TRUE or FALSE there holds for each of its
    tiles, so runs of full or empty tiles cost one evaluation; else it is halved."""
    count = math.prod(b - a + 1 for a, b in block)
    if judge is _partial:  # unevaluated: every tile of the block is partial
        tiles = itertools.product(*(range(a, b + 1) for a, b in block))
        found.update((coords, False) for coords in tiles if coords not in found)
        return
    if count > _SMALL_BLOCK:
        truth = judge(qboxes, keys.block_boxes(block))
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
            _classify_block(judge, keys, qboxes, part, found)
        return
    for coords in itertools.product(*(range(a, b + 1) for a, b in block)):
        if coords not in found:
            origin = _origin(coords, keys)
            truth = judge(qboxes, keys.boxes(origin, keys.shape(origin)))
            if truth != FALSE:
                found[coords] = truth == TRUE


def _origin(coords: tuple[int, ...], keys: _Tiling) -> tuple[int, ...]:
    return tuple(c * t for c, t in zip(coords, keys.tile, strict=True))


# -- box mode ----------------------------------------------------------------------------


def _box_row(judge, key: Axes, qboxes: list[Box], region, fail, pad: int, split: int):  # type: ignore[no-untyped-def]
    """Key boxes of one query tile in box mode, and how many candidates were empty."""
    boxes = _cluster([_pad(b, key.extents, pad) for b in region], key, pad)
    tiles: list[KeyTile] = []
    for box in boxes:
        refused = any(meets(box, f) for f in fail)
        truth = judge(qboxes, [box]) if refused else TRUE
        if truth == FALSE:
            continue
        origin = tuple(i.lo for i in box)
        shape = tuple(i.hi - i.lo + 1 for i in box)
        if truth == UNKNOWN and split and len(box) == 1:
            parts = [part[0] for f in fail if (part := intersect_box(box, f)) is not None]
            tiles += _split_box(box[0], parts, split)
        else:
            tiles.append(KeyTile(origin, shape, truth == TRUE))
    return tuple(sorted(tiles, key=lambda t: t.origin)), len(boxes) - len(tiles)


def _split_box(box: Interval, refused: list[Interval], grain: int) -> list[KeyTile]:
    """A partial 1-D key box as [partial head, full core, partial tail] around the longest
    run of keys that no query refuses, cut at multiples of ``grain`` from the box start."""
    free, start = [], box.lo
    for lo, hi in _union([(int(i.lo), int(i.hi)) for i in refused]):
        if lo > start:
            free.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= box.hi:
        free.append((start, box.hi))
    whole = [KeyTile((box.lo,), (box.hi - box.lo + 1,), False)]
    if not free:
        return whole
    lo, hi = max(free, key=lambda run: run[1] - run[0])
    core_lo = box.lo + -(-(lo - box.lo) // grain) * grain
    core_hi = core_lo + (hi - core_lo + 1) // grain * grain - 1
    if core_hi - core_lo + 1 < 2 * grain:
        return whole
    parts = [KeyTile((core_lo,), (core_hi - core_lo + 1,), True)]
    if core_lo > box.lo:
        parts.insert(0, KeyTile((box.lo,), (core_lo - box.lo,), False))
    if core_hi < box.hi:
        parts.append(KeyTile((core_hi + 1,), (box.hi - core_hi,), False))
    return parts


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
