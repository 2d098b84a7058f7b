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
import functools
import itertools
import math
import operator

import torch

from einscade.passes.analysis.block_layout import (
    BlockLayout,
    BlockMaskArrays,
    KeyTile,
    Row,
    count_allowed,
)
from einscade.passes.analysis.cost import Pairs
from einscade.passes.analysis.dense_groups import DENSE_LIMIT
from einscade.passes.analysis.grid_rows import grid_row, key_tile, unevaluated
from einscade.passes.analysis.interval_core import FALSE, TRUE, Box, Interval
from einscade.passes.analysis.intervals import BoxEvaluator
from einscade.passes.analysis.key_boxes import box_row
from einscade.passes.analysis.lookup_regions import TileKind, TileRegions, equal_lookup
from einscade.passes.analysis.masks import BoundMask, Mask, Params, Sizes
from einscade.passes.analysis.product import (
    UNION,
    ProductMask,
    flat_pairs,
    product_mask,
    product_pairs,
)
from einscade.passes.analysis.product_rows import product_box_rows
from einscade.passes.analysis.tilings import Tiling, aligned_box, make_tiling

__all__ = [
    "BlockLayout",
    "BlockMaskArrays",
    "Classifier",
    "KeyTile",
    "Row",
    "TileKind",
    "classify",
    "count_allowed",
]

KEY_MODES = ("grid", "box")


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
    dense_limit: int = DENSE_LIMIT,
) -> BlockLayout:
    """Classify the (query tile, key tile) pairs of ``mask`` as empty, partial or full.

        ``sizes``/``params``/``lookups``/``at`` bind the mask (:meth:`Mask.bind`).
        ``key_mode="grid"`` needs ``key_tile``; ``"box"`` ignores it and pads the innermost
        key extent to a multiple of ``pad``. ``split_limit``, ``dense_limit``: see intervals.py
    (``dense_limit=0``: interval reasoning alone). With
        ``count_useful`` the allowed pairs of every partial tile are counted by brute force
        (cost: the visited partial tiles' elements). ``split`` (box mode, 1-D keys): see
        :meth:`Classifier.layout`.
    """
    bound = mask.bind(sizes, params, lookups, at)
    layout = Classifier(bound, split_limit, dense_limit).layout(
        query_tile, key_tile, key_mode=key_mode, pad=pad, split=split
    )
    if count_useful:
        layout = dataclasses.replace(layout, useful_elements=count_allowed(layout, bound))
    return layout


class Classifier:
    """One bound mask and its :class:`BoxEvaluator`, for classifying many tilings: the
    evaluator's caches (per query piece) are shared, so a second tiling costs less.

    Per query tile, two regions decide most tiles without evaluating them: the keys some
    query may allow (``key_region``: a key tile outside is empty) and the keys some query
    may not allow (``fail_region``: a key tile outside is full). Only the tiles meeting both
    are evaluated (in grid mode a run of them is judged whole first, then halved).

    The evaluator (and the product view of its groups) is built on first use: a
    documents-style mask (lookup_regions.py) takes its regions, for every tile of a 1-D
    tiling at once, and its truths from the lookup tables, the same answers without it.
    """

    def __init__(self, bound: BoundMask, split_limit: int = 16, dense_limit: int = DENSE_LIMIT):
        self.bound = bound
        self.split_limit, self.dense_limit = split_limit, dense_limit
        # Documents-style masks: both regions and the truth straight from the lookup tables
        # (same answers), without building the evaluator.
        self.equal_lookup = equal_lookup(
            bound.predicate, bound.query, bound.key, bound.tables, split_limit
        )
        if self.equal_lookup is not None and not self._sparse_single_group():
            self.equal_lookup = None
        self._tiles: dict[object, dict] = {}  # type: ignore[type-arg]
        self._lookup_tiles: dict[int, TileRegions | None] = {}  # per 1-D query tile size

    @functools.cached_property
    def evaluator(self) -> BoxEvaluator:
        """The mask's :class:`BoxEvaluator` (built on first use: it compiles code)."""
        bound = self.bound
        return BoxEvaluator(
            bound.predicate, bound.query, bound.key, bound.tables, self.split_limit,
            self.dense_limit,
        )  # fmt: skip

    @functools.cached_property
    def product(self) -> ProductMask | None:
        """The mask's factors (product.py), or None; a 1-D grid is never a product (no
        evaluator needed to tell)."""
        if len(self.bound.query.names) < 2:
            return None
        return product_mask(self.evaluator)

    def _sparse_single_group(self) -> bool:
        """The equal-lookup predicate (one comparison: one group) has no dense table: it is
        over ``dense_limit`` pairs (build_dense_group's limit), or the evaluator says so."""
        pairs = math.prod(self.bound.query.extents) * math.prod(self.bound.key.extents)
        if pairs > self.dense_limit:
            return True
        groups = self.evaluator.groups
        return len(groups) == 1 and groups[0].dense is None

    def _judge(self, qboxes: list[Box], kboxes: list[Box]) -> int:
        """``evaluator.truth``, answered from the lookup tables where they can."""
        assert self.equal_lookup is not None
        found = self.equal_lookup.truth(qboxes, kboxes)
        return self.evaluator.truth(qboxes, kboxes) if found is None else found

    def _truth(self):  # type: ignore[no-untyped-def]
        """The judge of visited tiles: the evaluator's truth, or the lookup tables' first."""
        return self.evaluator.truth if self.equal_lookup is None else self._judge

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
        if keys is None and self._is_product(queries, keys):
            found = product_box_rows(self.product, queries.grid, queries.tile, pad)  # type: ignore[arg-type]
            if found is not None:
                return _layout(self.bound, queries, keys, key_mode, *found)
        rows, origins, shapes, dropped = [], [], [], 0
        cache, judge = self._tile_cache(keys), self._truth()
        for origin in queries.origins():
            shape = queries.shape(origin)
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
        kinds: bool = False,
    ) -> list[Row]:
        """(query tile size, key tiles) of the query tiles at ``indices`` (row-major order of
        their origins, as in :meth:`layout`): a sample for estimating a tiling's cost.
        ``evaluate=False`` decides from the two regions alone: a tile meeting both is called
        partial unevaluated (sound, but it may be empty or full), which costs no truth
        evaluation; ``refusals=False`` also skips the fail region (every visited tile is then
        partial), the cheapest glance. ``kinds`` (unevaluated grid rows): a row's tiles may be
        :class:`TileKind` stand-ins, only the size and fullness that ``cost.rows_cost`` reads,
        where the lookup tables give them directly (no KeyTile built)."""
        queries, keys = self._tilings(query_tile, key_tile, key_mode, pad, split)
        found, cache = [], self._tile_cache(keys)  # type: ignore[var-annotated]
        if kinds and not evaluate and keys is not None and len(keys.tile) == 1:
            stand_ins = self._kinds(queries, keys, indices, refusals)
            if stand_ins is not None:
                return stand_ins
        for index in indices:
            origin = queries.origin_at(index)
            shape = queries.shape(origin)
            judge = self._truth() if evaluate else unevaluated
            tiles, _ = self._row(queries, keys, origin, shape, pad, split, cache, judge, refusals)
            found.append((math.prod(shape), tiles))
        return found

    def _kinds(self, queries: Tiling, keys: Tiling, indices: list[int], refusals: bool):  # type: ignore[no-untyped-def]
        """Unevaluated 1-D grid rows as :class:`TileKind` lists, or None (some tile needs
        the general path)."""
        tiles = None if self.equal_lookup is None else self._lookup_tile_regions(queries)
        if tiles is None or keys.flat:
            return None
        size, extent, found = queries.tile[0], queries.grid[0], []
        for index in indices:
            row = tiles.grid_kinds(index, keys.tile[0], refusals)
            if row is None:
                return None
            found.append((min(size, extent - index * size), row))
        return found

    def _tile_cache(self, keys: Tiling | None) -> dict:  # type: ignore[type-arg]
        """KeyTile objects of one key tiling, shared by every row and call (immutable)."""
        return self._tiles.setdefault(None if keys is None else (keys.grid, keys.tile), {})

    def query_tile_count(self, query_tile: tuple[int, ...]) -> int:
        return make_tiling("query", self.bound.query, query_tile).count

    def _tilings(self, query_tile, key_tile, key_mode, pad, split):  # type: ignore[no-untyped-def]
        if key_mode not in KEY_MODES:
            raise ValueError(f"classify: key_mode must be one of {KEY_MODES}, got {key_mode!r}")
        queries = make_tiling("query", self.bound.query, query_tile)
        if key_mode == "box":
            if pad < 1:
                raise ValueError(f"classify: pad must be >= 1, got {pad}")
            if split < 0:
                raise ValueError(f"classify: split must be >= 0, got {split}")
            return queries, None
        if key_tile is None:
            raise ValueError("classify: key_mode='grid' needs key_tile")
        return queries, make_tiling("key", self.bound.key, key_tile)

    def _row(self, queries, keys, origin, shape, pad, split, cache, judge, refusals):  # type: ignore[no-untyped-def]
        if self._is_product(queries, keys):
            found = self._product_row(queries, keys, origin, shape, pad, cache)
            if found is not None:
                return found
        tiles = None if self.equal_lookup is None else self._lookup_tile_regions(queries)
        if tiles is not None and keys is None and refusals:
            full = tiles.full_box(origin[0] // queries.tile[0], pad)
            if full is not None:
                return (full,), 0
        qboxes = queries.boxes(origin, shape)
        fast = None
        if tiles is not None:
            fast = tiles.regions(origin[0] // queries.tile[0], refusals)
        elif self.equal_lookup is not None:
            fast = self.equal_lookup.regions(qboxes, refusals)
        if fast is not None:
            region, fail = fast
        else:
            region = self.evaluator.key_region(qboxes)
            # Keys some query may refuse; without looking, every key may be.
            fail = [self.bound.key.full_box()]
            if region and refusals:
                fail = self.evaluator.fail_region(qboxes)
        if not region:
            return (), 0
        if keys is None:
            return box_row(judge, self.bound.key, qboxes, region, fail, pad, split)
        return grid_row(judge, keys, qboxes, region, fail, cache), 0

    def _lookup_tile_regions(self, queries: Tiling) -> TileRegions | None:
        """The equal-lookup regions of every tile of a 1-D query tiling (computed once per
        tile size), or None (a grid, or tables the array path does not take)."""
        assert self.equal_lookup is not None
        if len(queries.grid) != 1 or queries.flat:
            return None
        size = queries.tile[0]
        if size not in self._lookup_tiles:
            self._lookup_tiles[size] = self.equal_lookup.tile_regions(queries.grid[0], size)
        return self._lookup_tiles[size]

    # -- product masks ---------------------------------------------------------------------
    # A mask that is a product over factors of axes (product.py) is classified factor by
    # factor over box tiles: a key box is the product of per-factor boxes, full iff full in
    # every factor, empty iff empty in one. Factor answers are cached, so a row costs a few
    # lookups (the 1M-token 3-D neighborhood has 16384 rows, 80 distinct factor tiles).

    def _is_product(self, queries: Tiling, keys: Tiling | None) -> bool:
        return (
            len(queries.grid) > 1
            and not queries.flat
            and (keys is None or not keys.flat)
            and self.product is not None
        )

    def _product_row(self, queries, keys, origin, shape, pad, cache):  # type: ignore[no-untyped-def]
        """The row of a query box on the product path, or None where a factor's region is a
        union of boxes in box mode (the general path merges those)."""
        product = self.product
        qbox = tuple(Interval(o, o + n - 1) for o, n in zip(origin, shape, strict=True))
        spans = [product.spans(f, qbox) for f in range(len(product.factors))]
        if keys is None:
            found = [product.box_part(f, s, pad) for f, s in enumerate(spans)]
            if any(f is None for f in found):
                return (), 0
            if any(f == UNION for f in found):
                return None
            if any(part[1] == FALSE for part in found):
                return (), 1
            box = [Interval(0, 0)] * len(qbox)
            for (axes, _), (part, _) in zip(product.factors, found, strict=True):
                for a, interval in zip(axes, part, strict=True):
                    box[a] = interval
            full = all(truth == TRUE for _, truth in found)
            tile = KeyTile(tuple(i.lo for i in box), tuple(i.hi - i.lo + 1 for i in box), full)
            return (tile,), 0
        lists = [
            product.grid_part(f, s, tuple(keys.tile[a] for a in product.factors[f][0]))
            for f, s in enumerate(spans)
        ]
        rows = []
        coords = [0] * len(qbox)
        for combo in itertools.product(*lists):
            for (axes, _), (part, _) in zip(product.factors, combo, strict=True):
                for a, c in zip(axes, part, strict=True):
                    coords[a] = c
            rows.append(key_tile(keys, tuple(coords), all(f for _, f in combo), cache))
        if not product.ordered:
            rows.sort(key=_ORIGIN)
        return tuple(rows), 0

    def product_pairs(self, query_tile, key_tile, key_mode: str, pad: int) -> Pairs | None:  # type: ignore[no-untyped-def]
        """The visited tiles of a tiling of a product mask as arrays for
        :func:`cost.pairs_costs` (:func:`product.product_pairs`), or None where the product
        path does not apply. Row-major token tiles that are aligned boxes of the grid
        (``aligned_box``) count as those boxes: same tiles, in the same order."""
        if (
            self.product is None
            or key_mode not in KEY_MODES
            or (key_mode == "grid") != (key_tile is not None)
        ):
            return None
        extents = self.bound.query.extents
        query_box = aligned_box(extents, tuple(query_tile))
        flat = len(query_tile) == 1 and key_tile is not None and len(key_tile) == 1
        if flat and (query_box is None or aligned_box(extents, tuple(key_tile)) is None):
            return flat_pairs(self.product, query_tile[0], key_tile[0])
        key_box = None if key_tile is None else aligned_box(extents, tuple(key_tile))
        if query_box is None or (key_tile is not None and key_box is None):
            return None
        return product_pairs(self.product, query_box, key_box, pad)


_ORIGIN = operator.attrgetter("origin")
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
