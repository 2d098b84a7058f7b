"""Product masks: a conjunction of conditions on disjoint groups of grid axes.

When every group of conjuncts (:class:`~einscade.passes.analysis.intervals.BoxEvaluator`)
reads the same axes on the query and the key side (NATTEN windows per axis, HaloNet, blocked
attention, and after folding (permute.py) a dilated window per (group, position) pair of
axes), the mask is a product over these *factors*: a box of tiles is the product of per-factor
boxes, full iff full in every factor, empty iff empty in one. A box tile of the query grid is
then a product of per-factor *factor tiles* (its spans on the factor's axes), so each factor
tile is classified once and shared by every query tile, every tiling with the same extents on
those axes, and the cost estimate of every candidate layout.

:class:`ProductMask` holds the per-factor answers (a key box and its truth in box mode; the
key tiles with their full flags in grid mode) that rows are built from, and per factor the
same answers as arrays over all its factor tiles (factor_arrays.py). :func:`product_pairs`
combines those into the visited tiles of a whole tiling, whose exact modelled cost
``cost.pairs_costs`` sums with array operations for many candidates at once, never building
a row (the 1M-token 3-D neighborhood has 16,384 query tiles but only 80 distinct factor
tiles). A factor over one axis with a small table answers each tiling on demand with bit
operations (factor_bits.py); the others with a block sum of the factor's table per tiling
(factor_arrays.py); both are kept as the kinds of visited tiles with counts (a factor's
tiles take a few sizes: the cost sums run over a few entries per tiling);
:func:`flat_pairs` reads coarser token tiles off the prefix counts of finer ones;
product_rows.py builds the chosen tiling's rows from the same per-factor answers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from einscade.passes.analysis.block_layout import tile_counts
from einscade.passes.analysis.cost import Pairs
from einscade.passes.analysis.factor_arrays import FactorArrays, Kinds
from einscade.passes.analysis.factor_bits import BITS_LIMIT, bits_box, bits_grid
from einscade.passes.analysis.flat_pairs import MAX_PAIRS, flat_pairs
from einscade.passes.analysis.interval_core import FALSE, TRUE, Box, Interval
from einscade.passes.analysis.intervals import BoxEvaluator
from einscade.passes.analysis.key_boxes import pad_box

UNION = "union"  # a factor's key region is several boxes: no single key box (box mode)
__all__ = ["MAX_PAIRS", "UNION", "ProductMask", "flat_pairs", "product_mask", "product_pairs"]
Spans = tuple[Interval, ...]  # a factor tile: one interval per axis of the factor
BoxPart = tuple[Box, int] | str | None  # (key box, truth), UNION, or None (no key)
GridPart = list[tuple[tuple[int, ...], bool]]  # (key tile coordinates, full)


class ProductMask:
    """The factors of a product mask, with cached per-factor-tile answers.

    ``factors`` lists, in order of their first axis, each factor's axes and the index of its
    group in the evaluator (None: no conjunct reads these axes, every key is allowed)."""

    def __init__(self, evaluator: BoxEvaluator, factors: list[tuple[tuple[int, ...], int | None]]):
        self.evaluator = evaluator
        self.factors = factors
        self.extents = evaluator.key.extents
        # Factors over consecutive axes list key tiles in row-major order already.
        flat = [a for axes, _ in factors for a in axes]
        self.ordered = flat == sorted(flat)
        # Factors with one table (a window per axis: the evaluator builds it once) share
        # their answers: a factor's cache key is the first factor with its table.
        self._same = [_first_with_table(evaluator, factors, f) for f in range(len(factors))]
        self._boxes: dict[tuple, BoxPart] = {}  # type: ignore[type-arg]
        self._grids: dict[tuple, GridPart] = {}  # type: ignore[type-arg]
        self._arrays: dict[int, FactorArrays | None] = {}
        self._pairs: dict[tuple, Kinds | None] = {}  # type: ignore[type-arg]
        self._rows: dict[tuple, object] = {}  # type: ignore[type-arg]
        self._small: dict[int, bool] = {}  # per factor: answered by factor_bits.py
        # F of flat token tiles per (query size, key size): coarser tiles read it off finer.
        self.flat_counts: dict[tuple[int, int], np.ndarray] = {}

    def arrays(self, factor: int) -> FactorArrays | None:
        """The factor's table counts (None without a dense table)."""
        factor = self._same[factor]
        if factor not in self._arrays:
            index = self.factors[factor][1]
            dense = None if index is None else self.evaluator.groups[index].dense
            self._arrays[factor] = None if dense is None else FactorArrays(dense.allowed)
        return self._arrays[factor]

    def pairs(self, factor: int, tile: tuple[int, ...], key_tile, pad: int) -> Kinds | None:  # type: ignore[no-untyped-def]
        """The (factor tile, key part) pairs of one factor for query tiles of extents
        ``tile`` on its axes, as :func:`kinds` (cached: tilings share them)."""
        key = (self._same[factor], tile, key_tile, pad)
        if key not in self._pairs:
            extents = [self.extents[a] for a in self.factors[factor][0]]
            self._pairs[key] = _factor_pairs(self, factor, extents, tile, key_tile, pad)
        return self._pairs[key]

    def kind_rows(self, factor: int, tile: tuple[int, ...], key_tile, pad: int):  # type: ignore[no-untyped-def]
        """:meth:`pairs` as a list of (query size, key size, full, count) tuples with the
        count of tiles, or None (cached: product_pairs combines them in Python)."""
        key = (self._same[factor], tile, key_tile, pad)
        if key not in self._rows:
            table, rows = self.arrays(factor), None
            if table is not None:
                if self.bits(factor):  # answered on demand: bits need no batching
                    bits = bits_box if key_tile is None else bits_grid
                    bits(table, table.bits, [(tile[0], pad if key_tile is None else key_tile[0])])
                rows = table.rows.get((tile, key_tile or pad))
            if rows is None:  # not answered by factor_bits.py (or a union: the slow path)
                arrays = self.pairs(factor, tile, key_tile, pad)
                columns = None if arrays is None else [a.tolist() for a in arrays]
                rows = None if columns is None else list(zip(*columns, strict=True))
            self._rows[key] = None if rows is None else (rows, sum(row[3] for row in rows))
        return self._rows[key]

    def bits(self, factor: int) -> bool:
        """Whether the factor's answers come from factor_bits.py (a small one-axis table)."""
        found = self._small.get(factor)
        if found is None:
            arrays = self.arrays(factor)
            found = arrays is not None and arrays.d == 1 and arrays.extents[0] <= BITS_LIMIT
            self._small[factor] = found
        return found

    def _axis_extents(self, factor: int) -> list[int]:
        return [self.extents[a] for a in self.factors[factor][0]]

    def spans(self, factor: int, box: Box) -> Spans:
        return tuple(box[a] for a in self.factors[factor][0])

    def box_part(self, factor: int, spans: Spans, pad: int) -> BoxPart:
        """The key box of a factor tile (its key region's one box, the innermost grid axis
        padded to a multiple of ``pad``) and its truth; None without keys; UNION."""
        last = self.factors[factor][0][-1] == len(self.extents) - 1  # only it is padded
        key = (self._same[factor], spans, pad if last else 1)
        found = self._boxes.get(key, False)
        if found is False:
            found = self._boxes[key] = self._box_part(factor, spans, pad)
        return found  # type: ignore[return-value]

    def _box_part(self, factor: int, spans: Spans, pad: int) -> BoxPart:
        axes, index = self.factors[factor]
        extents = tuple(self.extents[a] for a in axes)
        if index is None:
            return tuple(Interval(0, n - 1) for n in extents), TRUE
        parts = self._region(factor, spans)
        if len(parts) != 1:
            return UNION if parts else None
        box = parts[0]
        if axes[-1] == len(self.extents) - 1 and pad > 1:
            box = pad_box(box, extents, pad)
        return box, self._truth(factor, spans, box)

    def grid_part(self, factor: int, spans: Spans, tile: tuple[int, ...]) -> GridPart:
        """Key tiles (coordinates on the factor's axes, full) of a factor tile in grid mode,
        ``tile`` giving the key tile's extent on each of them; empty tiles left out."""
        key = (self._same[factor], spans, tile)
        found = self._grids.get(key)
        if found is None:
            found = self._grids[key] = self._grid_part(factor, spans, tile)
        return found

    def _grid_part(self, factor: int, spans: Spans, tile: tuple[int, ...]) -> GridPart:
        axes, index = self.factors[factor]
        extents = tuple(self.extents[a] for a in axes)
        if index is None:
            return [(c, True) for c in itertools.product(*map(range, tile_counts(extents, tile)))]
        coords: set[tuple[int, ...]] = set()
        for part in self._region(factor, spans):
            ranges = (range(i.lo // t, i.hi // t + 1) for i, t in zip(part, tile, strict=True))
            coords.update(itertools.product(*ranges))
        found = []
        for c in sorted(coords):
            kbox = tuple(
                Interval(j * t, min((j + 1) * t, n) - 1)
                for j, t, n in zip(c, tile, extents, strict=True)
            )
            truth = self._truth(factor, spans, kbox)
            if truth != FALSE:
                found.append((c, truth == TRUE))
        return found

    # A factor's dense table answers from the spans directly; else the evaluator's group,
    # through boxes of the whole grid (its caches are shared with the general path).

    def _region(self, factor: int, spans: Spans) -> list[Box]:
        axes, index = self.factors[factor]
        dense = self.evaluator.groups[index].dense  # type: ignore[index]
        if dense is not None:
            return dense.span_region(spans)
        return self.evaluator.group_region(index, self._query(axes, spans))  # type: ignore[arg-type]

    def _truth(self, factor: int, spans: Spans, kspans: Box) -> int:
        axes, index = self.factors[factor]
        dense = self.evaluator.groups[index].dense  # type: ignore[index]
        if dense is not None:
            return dense.span_truth(spans, kspans)
        kbox = _place(self.evaluator.key.full_box(), axes, kspans)
        return self.evaluator.group_truth(index, self._query(axes, spans), kbox)  # type: ignore[arg-type]

    def _query(self, axes: tuple[int, ...], spans: Spans) -> Box:
        return _place(self.evaluator.query.full_box(), axes, spans)


def product_mask(evaluator: BoxEvaluator) -> ProductMask | None:
    """The factors of the evaluator's mask (module doc), or None when it is no product over a
    multi-axis grid (a group reading different query and key axes, or different grids)."""
    query, key = evaluator.query, evaluator.key
    if query.extents != key.extents or len(query.names) < 2:
        return None
    factors: list[tuple[tuple[int, ...], int | None]] = []
    for index, group in enumerate(evaluator.groups):
        if not group.q_axes or group.q_axes != group.k_axes:
            return None
        factors.append((group.q_axes, index))
    covered = {a for axes, _ in factors for a in axes}
    factors += [((a,), None) for a in range(len(query.names)) if a not in covered]
    return ProductMask(evaluator, sorted(factors, key=lambda f: f[0]))


def _first_with_table(evaluator: BoxEvaluator, factors, factor: int) -> int:  # type: ignore[no-untyped-def]
    """The first factor whose dense table is ``factor``'s (the same array), else itself."""
    index = factors[factor][1]
    dense = None if index is None else evaluator.groups[index].dense
    if dense is None:
        return factor
    for other, (_, other_index) in enumerate(factors[:factor]):
        found = None if other_index is None else evaluator.groups[other_index].dense
        if found is not None and found.allowed is dense.allowed:
            return other
    return factor


def _place(box: Box, axes: Sequence[int], spans: Box) -> Box:
    wide = list(box)
    for a, span in zip(axes, spans, strict=True):
        wide[a] = span
    return tuple(wide)


def _axis_spans(extent: int, tile: int) -> list[Interval]:
    return [Interval(o, min(o + tile, extent) - 1) for o in range(0, extent, tile)]


def product_pairs(
    product: ProductMask, query_tile: tuple[int, ...], key_tile: tuple[int, ...] | None, pad: int
) -> Pairs | None:
    """The visited tiles of box tiles ``query_tile`` (one extent per axis) with a key box per
    tile (``key_tile`` None, padded by ``pad``) or a grid of key boxes ``key_tile``, as
    kinds with counts for :func:`cost.pairs_costs` (:func:`kinds`); None where a factor's key
    region is a union (box mode) or the pairs are too many."""
    parts, tiles, pairs = [], 1, 1
    for factor, (axes, _) in enumerate(product.factors):
        if len(axes) == 1:  # the common case, without generators
            (axis,) = axes
            extents = (query_tile[axis],)
            sub_tile = None if key_tile is None else (key_tile[axis],)
            tiles *= -(-product.extents[axis] // extents[0])
        else:
            extents = tuple(query_tile[a] for a in axes)
            sub_tile = None if key_tile is None else tuple(key_tile[a] for a in axes)
            counts = (-(-product.extents[a] // t) for a, t in zip(axes, extents, strict=True))
            tiles *= math.prod(counts)
        last = axes[-1] == len(product.extents) - 1
        found = product.kind_rows(factor, extents, sub_tile, pad if last else 1)
        if found is None:
            return None
        parts.append(found[0])
        pairs *= found[1]
    if pairs > MAX_PAIRS:
        return None
    if math.prod(map(len, parts)) > PYTHON_COMBINATIONS:
        columns = [np.array(c) for c in zip(*parts[0], strict=True)]
        for rows in parts[1:]:
            other = [np.array(c) for c in zip(*rows, strict=True)]
            columns = [
                combine.outer(a, b).reshape(-1)
                for combine, a, b in zip(_COMBINE, columns, other, strict=True)
            ]
        return tiles, *columns  # type: ignore[return-value]
    combined = parts[0]
    for rows in parts[1:]:  # few kinds per factor: their combinations in Python
        combined = [
            (q * q2, k * k2, f and f2, c * c2)
            for q, k, f, c in combined
            for q2, k2, f2, c2 in rows
        ]  # fmt: skip
    # Sequences, not arrays: pairs_costs converts every layout's kinds at once.
    queries, keys, full, counts = zip(*combined, strict=True) if combined else ((),) * 4
    return tiles, queries, keys, full, counts  # type: ignore[return-value]


_COMBINE = (np.multiply, np.multiply, np.logical_and, np.multiply)
PYTHON_COMBINATIONS = 4096  # kind combinations built in Python at most (else numpy outer)


def kinds(queries: np.ndarray, keys: np.ndarray, full: np.ndarray) -> Kinds:
    """Visited tiles given one by one (query size, key size, full) as their distinct kinds
    with counts: the cost sums weigh each kind by its count, over far fewer entries (a
    factor's tiles take a few sizes)."""
    if not len(queries):
        return queries, keys, full, np.zeros(0, np.int64)
    span = int(keys.max()) + 1
    codes, counts = np.unique((queries * span + keys) * 2 + full, return_counts=True)
    pairs, is_full = np.divmod(codes, 2)
    found_queries, found_keys = np.divmod(pairs, span)
    return found_queries, found_keys, is_full.astype(bool), counts


def _factor_pairs(product, factor, extents, tile, sub_tile, pad):  # type: ignore[no-untyped-def]
    """The (factor tile, key part) pairs of one factor as :func:`kinds` (query tiles of
    ``tile`` over its axes of ``extents``): from block sums of its table when
    it has a dense one, else tile by tile."""
    arrays = product.arrays(factor)
    if arrays is not None:
        if sub_tile is not None:
            return arrays.tiled_grid(tuple(tile), tuple(sub_tile))
        found = arrays.tiled_box(tuple(tile), pad)
        if found is not None:
            return found
    elif product.factors[factor][1] is None:
        return _free_pairs(extents, tile, sub_tile)
    per_axis = [_axis_spans(n, t) for n, t in zip(extents, tile, strict=True)]
    found = _factor_pairs_by_tile(product, factor, per_axis, sub_tile, pad)
    return None if found is None else kinds(*found)


def _free_pairs(extents, tile, key_tile) -> Kinds:  # type: ignore[no-untyped-def]
    """:func:`_factor_pairs` of a factor no conjunct reads (every pair allowed): each query
    tile's key box is the whole of its axes (full), or it meets every key tile (full);
    counted per tile size in Python, as :func:`kinds` orders them."""
    found: dict[tuple[int, int], int] = {}
    queries = _sizes(extents, tile)
    keys = {math.prod(extents): 1} if key_tile is None else _sizes(extents, key_tile)
    for q, q_count in queries.items():
        for k, k_count in keys.items():
            found[(q, k)] = found.get((q, k), 0) + q_count * k_count
    pairs = sorted(found.items())
    return (np.array([q for (q, _), _ in pairs], np.int64),
            np.array([k for (_, k), _ in pairs], np.int64),
            np.ones(len(pairs), bool), np.array([c for _, c in pairs], np.int64))  # fmt: skip


def _sizes(extents, tile) -> dict[int, int]:  # type: ignore[no-untyped-def]
    """Tile sizes (tails clipped) of a tiling of ``extents`` by ``tile``, with counts."""
    found = {1: 1}
    for n, t in zip(extents, tile, strict=True):
        whole, tail = divmod(n, t)
        lengths = {t: whole} if not tail else {t: whole, tail: 1}
        if not whole:
            lengths = {tail: 1}
        found = _product_counts(found, lengths)
    return found


def _product_counts(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    found: dict[int, int] = {}
    for x, count_x in a.items():
        for y, count_y in b.items():
            found[x * y] = found.get(x * y, 0) + count_x * count_y
    return found


def _factor_pairs_by_tile(product, factor, per_axis, sub_tile, pad):  # type: ignore[no-untyped-def]
    """:func:`_factor_pairs` from the cached per-factor-tile answers (what rows use)."""
    queries: list[int] = []
    keys: list[int] = []
    full: list[bool] = []
    for spans in itertools.product(*per_axis):
        size = math.prod(i.hi - i.lo + 1 for i in spans)
        if sub_tile is None:
            found = product.box_part(factor, spans, pad)
            if found == UNION:
                return None
            if found is None or found[1] == FALSE:
                continue
            queries.append(size)
            keys.append(math.prod(i.hi - i.lo + 1 for i in found[0]))
            full.append(found[1] == TRUE)
            continue
        axes = product.factors[factor][0]
        extents = [product.extents[a] for a in axes]
        for coords, is_full in product.grid_part(factor, spans, sub_tile):
            queries.append(size)
            keys.append(_tile_size(coords, sub_tile, extents))
            full.append(is_full)
    return np.array(queries, np.int64), np.array(keys, np.int64), np.array(full, bool)


def _tile_size(coords: tuple[int, ...], tile: tuple[int, ...], extents: list[int]) -> int:
    return math.prod(min(t, n - c * t) for c, t, n in zip(coords, tile, extents, strict=True))
