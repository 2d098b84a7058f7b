"""Rows of a product mask's box tiling with a key box per tile, built from arrays.

Every query box tile of a product mask (product.py) is a product of factor tiles, and its
key box the product of their key boxes: each factor tile's answer (key box, truth) is looked
up once, and the rows of all query tiles come from gathers over the factor-tile indices
instead of a Python loop of per-row lookups. The answers are those of
:meth:`ProductMask.box_part`, so the rows equal the per-row path's (tested); a factor tile
whose region is a union of boxes sends the whole tiling back to that path.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from einscade.passes.analysis.block_layout import KeyTile
from einscade.passes.analysis.factor_bits import bits_box
from einscade.passes.analysis.interval_core import FALSE, TRUE, Interval
from einscade.passes.analysis.product import UNION, ProductMask

# Per factor tile: no key (the row is empty, not counted as a dropped tile), an empty key
# box (dropped), a partial or a full key box.
NONE, EMPTY, PARTIAL, FULL = 0, 1, 2, 3


def product_box_rows(
    product: ProductMask, grid: tuple[int, ...], tile: tuple[int, ...], pad: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], list[tuple], int] | None:  # type: ignore[type-arg]
    """(origins, shapes, rows, dropped) of the box tiles ``tile`` of ``grid`` in row-major
    order of their origins, each row its key box (or none), as ``Classifier.layout`` builds
    them; None when some factor tile's key region is a union of boxes."""
    counts = [-(-n // t) for n, t in zip(grid, tile, strict=True)]
    if math.prod(counts) <= PYTHON_ROWS:
        answers = _bit_answers(product, grid, tile, pad)
        if answers is not None:
            return _python_rows(grid, tile, counts, answers)
    coords = [c.reshape(-1) for c in np.meshgrid(*map(np.arange, counts), indexing="ij")]
    kind = np.full(len(coords[0]), FULL, np.int64)
    k_lo: list[np.ndarray] = [np.zeros(0, np.int64)] * len(grid)
    k_len: list[np.ndarray] = [np.zeros(0, np.int64)] * len(grid)
    for factor, (axes, _) in enumerate(product.factors):
        answers = _factor_answers(product, factor, [(grid[a], tile[a]) for a in axes], pad)
        if answers is None:
            return None
        f_kind, f_lo, f_len = answers
        index = np.zeros_like(coords[0])
        for a in axes:  # the factor tile's row-major index over its own axes
            index = index * counts[a] + coords[a]
        kind = np.minimum(kind, f_kind[index])
        for j, a in enumerate(axes):
            k_lo[a], k_len[a] = f_lo[j][index], f_len[j][index]
    starts = [c * t for c, t in zip(coords, tile, strict=True)]
    ends = [np.minimum(s + t, n) for s, t, n in zip(starts, tile, grid, strict=True)]
    origins = _tuples(starts)
    shapes = _tuples([e - s for e, s in zip(ends, starts, strict=True)])
    rows: list[tuple] = []  # type: ignore[type-arg]
    for found, lo, length in zip(kind.tolist(), _tuples(k_lo), _tuples(k_len), strict=True):
        rows.append((KeyTile(lo, length, found == FULL),) if found >= PARTIAL else ())
    return origins, shapes, rows, int(np.count_nonzero(kind == EMPTY))


PYTHON_ROWS = 4096  # query tiles built in Python at most from the factors' bit answers


def _bit_answers(product: ProductMask, grid, tile, pad):  # type: ignore[no-untyped-def]
    """Per axis, per factor tile: (kind, key lo, key length), when every factor is one axis
    whose answers are Python lists (factor_bits.py, or no conjunct: the whole axis), else
    None (the array path decides)."""
    found = []
    for factor, (axes, index) in enumerate(product.factors):
        if len(axes) != 1:
            return None
        (axis,) = axes
        n, t = grid[axis], tile[axis]
        if index is None:
            found.append([(FULL, 0, n)] * -(-n // t))
            continue
        if not product.bits(factor):
            return None
        arrays = product.arrays(factor)
        key = ((t,), pad if axis == len(grid) - 1 else 1)
        if key not in arrays.box_lists:  # type: ignore[union-attr]
            bits_box(arrays, arrays.bits, [(t, key[1])])  # type: ignore[union-attr,arg-type]
        tiles = arrays.box_lists[key]  # type: ignore[union-attr]
        if tiles is None:
            return None
        found.append([
            (FULL if full else PARTIAL if some else NONE, lo, length)
            for some, lo, length, full in tiles
        ])  # fmt: skip
    return found


def _python_rows(grid, tile, counts, answers):  # type: ignore[no-untyped-def]
    """:func:`product_box_rows`'s result from per-axis factor answers, built axis by axis
    (each tile's tuples extend its prefix's: few operations per tile)."""
    prefixes = [((), (), FULL, (), ())]  # origin, shape, kind, key lo, key length
    for a, (n, t) in enumerate(zip(grid, tile, strict=True)):
        axis = [
            ((c * t,), (min(t, n - c * t),), kind, (lo,), (length,))
            for c, (kind, lo, length) in enumerate(answers[a])
        ]
        prefixes = [
            (o + o2, s + s2, k if k < k2 else k2, lo + lo2, size + size2)
            for o, s, k, lo, size in prefixes
            for o2, s2, k2, lo2, size2 in axis
        ]  # fmt: skip
    origins = [p[0] for p in prefixes]
    shapes = [p[1] for p in prefixes]
    rows = [(KeyTile(lo, size, k == FULL),) if k >= PARTIAL else () for *_, k, lo, size in prefixes]
    return origins, shapes, rows, 0


def _factor_answers(product: ProductMask, factor: int, axes: list[tuple[int, int]], pad: int):  # type: ignore[no-untyped-def]
    """Per factor tile (row-major over the factor's axes, each (extent, tile)): its kind and
    key box (lo and length per axis), from the factor's table counts when it has a table
    (the boxes of ``FactorArrays.tile_boxes``, those of :meth:`ProductMask.box_part`), else
    from :meth:`ProductMask.box_part`; None on a union."""
    arrays = product.arrays(factor)
    if arrays is not None:
        last = product.factors[factor][0][-1] == len(product.extents) - 1
        found = arrays.tile_boxes(tuple(t for _, t in axes), pad if last else 1)
        if found is not None:
            some, lo, length, full = found
            return np.where(some, np.where(full, FULL, PARTIAL), NONE), lo, length
    per_axis = [[Interval(o, min(o + t, n) - 1) for o in range(0, n, t)] for n, t in axes]
    kinds, los, lengths = [], [], []
    for spans in itertools.product(*per_axis):
        part = product.box_part(factor, spans, pad)
        if part == UNION:
            return None
        if part is None:
            kinds.append(NONE)
            los.append((0,) * len(axes))
            lengths.append((0,) * len(axes))
            continue
        box, truth = part  # type: ignore[misc]
        kinds.append(EMPTY if truth == FALSE else FULL if truth == TRUE else PARTIAL)
        los.append(tuple(i.lo for i in box))
        lengths.append(tuple(i.hi - i.lo + 1 for i in box))
    lo = np.array(los, np.int64).reshape(-1, len(axes)).T
    length = np.array(lengths, np.int64).reshape(-1, len(axes)).T
    return np.array(kinds, np.int64), lo, length


def _tuples(columns: list[np.ndarray]) -> list[tuple[int, ...]]:
    """Rows of per-axis columns as tuples of Python ints."""
    return list(zip(*(c.tolist() for c in columns), strict=True))
