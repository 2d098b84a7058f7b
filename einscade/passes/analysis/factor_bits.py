"""Tilings of a small one-axis factor's table answered with bit operations on Python ints.

The layout search asks each one-axis factor of a product mask (product.py: a window per
axis, a folded group axis) for a dozen tilings of a table of at most a few hundred rows. As
array operations (factor_arrays.py) that is a dozen numpy calls per tiling, each costing
microseconds of overhead on arrays of a few thousand entries. Here the whole table is one
Python int: row ``i`` of the table is the bit segment ``[i * W, i * W + n)`` (``W >= 2 n``
leaves a gap after each row), so

- a query tile's keys allowed by *some* of its rows (OR) or by *all* of them (AND) are a
  shift-and-combine of the rows below it, for every tile at once ("smearing" across
  ``q`` segments, doubling the width each step);
- a key tile meets the OR (has an allowed pair) or lies inside the AND (every pair allowed:
  a full tile) when a smear across its ``k`` bits leaves a bit at its first key;

and a popcount of the smeared int under a mask of tile starts counts the visited (query tile,
key tile) pairs of each kind, a few dozen int operations per tiling. The gap keeps smears
within a row; the AND copy has ones in the gap and in the rows past the table, so a clipped
tail tile is judged on its own keys and rows only.

Results are those of :meth:`FactorArrays.tiled_grid` and :meth:`FactorArrays.tiled_box`
(same kinds in the same order, same key boxes: tested), as lists of Python rows
``(query size, key size, full, count)`` in ``FactorArrays.rows`` (the arrays are made on
demand) and, in box mode, per-tile key boxes in ``FactorArrays.box_lists``.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from einscade.passes.analysis.factor_arrays import FactorArrays

BITS_LIMIT = 128  # tables of at most this many rows take the bit path (big ints stay small)


class TableBits:
    """A one-axis table (``allowed``, ``[n, n]``) as two Python ints of ``2 n`` segments of
    ``width`` bits: ``any`` (rows, zeros elsewhere) and ``all`` (rows with ones in the gap,
    then rows of ones)."""

    def __init__(self, allowed: np.ndarray):
        n = allowed.shape[0]
        self.n = n
        self.width = width = 8 * -(-(2 * n) // 8)  # whole bytes per segment
        table = np.zeros((2 * n, width), bool)
        table[:n, :n] = allowed
        self.any = _to_int(table)
        table[:n, n:] = True
        table[n:] = True
        self.all = _to_int(table)
        self.row_mask = (1 << n) - 1
        self._smeared: dict[int, tuple[int, int]] = {}
        self._starts: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def rows(self, q: int) -> tuple[int, int]:
        """(OR, AND) of every ``q`` consecutive rows, at the first row's segment."""
        q = min(q, self.n)
        found = self._smeared.get(q)
        if found is None:
            found = (
                _smear(self.any, q, self.width, operator.or_),
                _smear(self.all, q, self.width, operator.and_),
            )
            self._smeared[q] = found
        return found

    def starts(self, tile: int, stride: int) -> list[tuple[int, int]]:
        """:func:`_starts` over the table's ``n`` (cached: tilings share their tiles)."""
        found = self._starts.get((tile, stride))
        if found is None:
            found = self._starts[(tile, stride)] = _starts(self.n, tile, stride)
        return found


def bits_grid(arrays: FactorArrays, bits: TableBits, requests: list[tuple[int, int]]) -> None:
    """Fill ``arrays.rows`` with the kinds of :meth:`FactorArrays.tiled_grid` for the
    (query tile, key tile) extents of ``requests`` (a one-axis factor)."""
    n, width = bits.n, bits.width
    for q, k in dict.fromkeys(requests):
        if ((q,), (k,)) in arrays.rows:
            continue
        some, every = bits.rows(q)
        some = _smear(some, min(k, n), 1, operator.or_)
        every = _smear(every, min(k, n), 1, operator.and_)
        found = []
        for q_size, segments in bits.starts(q, width * q):
            for k_size, keys in bits.starts(k, k):
                mask = segments * keys  # a bit at each (query tile, key tile) start
                hits, full = (some & mask).bit_count(), (every & mask).bit_count()
                if hits > full:
                    found.append((q_size, k_size, False, hits - full))
                if full:
                    found.append((q_size, k_size, True, full))
        arrays.rows[((q,), (k,))] = found


def bits_box(arrays: FactorArrays, bits: TableBits, requests: list[tuple[int, int]]) -> None:
    """Fill ``arrays.rows`` and ``arrays.box_lists`` with :meth:`FactorArrays.tiled_box`'s
    kinds and :meth:`FactorArrays.tile_boxes`'s key boxes for the (query tile, pad) of
    ``requests`` (a one-axis factor); None for both where a tile's keys are not one box."""
    n, width, row_mask = bits.n, bits.width, bits.row_mask
    for q, pad in dict.fromkeys(requests):
        if ((q,), pad) in arrays.rows:
            continue
        any_rows, all_rows = bits.rows(q)
        counts: dict[tuple[int, int, bool], int] = {}
        tiles: list[tuple[bool, int, int, bool]] = []
        tail = n - (-(-n // q) - 1) * q
        for origin in range(0, n, q):
            shift = origin * width
            some = (any_rows >> shift) & row_mask
            lo = (some & -some).bit_length() - 1 if some else 0
            hi = some.bit_length() - 1 if some else n - 1
            if some and some.bit_count() != hi - lo + 1:
                arrays.rows[((q,), pad)] = arrays.box_lists[((q,), pad)] = None
                break
            keys = min(-(-(hi - lo + 1) // pad) * pad, n)
            lo = max(0, min(lo, n - keys))
            box = ((1 << keys) - 1) << lo
            full = (all_rows >> shift) & box == box
            tiles.append((bool(some), lo, keys, full))
            if some:
                clipped = origin + q > n
                kind = (clipped, keys, full)
                counts[kind] = counts.get(kind, 0) + 1
        else:
            arrays.rows[((q,), pad)] = [
                (tail if clipped else q, keys, full, count)
                for (clipped, keys, full), count in sorted(counts.items())
            ]
            arrays.box_lists[((q,), pad)] = tiles


def _starts(n: int, tile: int, stride: int):  # type: ignore[no-untyped-def]
    """(size, bits at the starts) of the unclipped tiles, then of the clipped tail if any:
    tiles of ``tile`` over ``n``, a tile's start at bit ``index * stride``."""
    count = -(-n // tile)
    tail = n - (count - 1) * tile
    whole = count if tail == tile else count - 1
    found = []
    if whole:  # bits 0, stride, .., (whole - 1) * stride: a geometric series
        found.append((tile, ((1 << (whole * stride)) - 1) // ((1 << stride) - 1)))
    if whole < count:
        found.append((tail, 1 << (whole * stride)))
    return found


def _smear(value: int, width: int, stride: int, combine) -> int:  # type: ignore[no-untyped-def]
    """Each bit position combined with the ``width - 1`` positions ``stride`` apart above it
    (``combine`` OR or AND), doubling the span each step."""
    span = 1
    while 2 * span <= width:
        value = combine(value, value >> (span * stride))
        span *= 2
    if span < width:
        value = combine(value, value >> ((width - span) * stride))
    return value


def _to_int(table: np.ndarray) -> int:
    """A bool table, row after row, as the bits of one int (bit 0 first)."""
    return int.from_bytes(np.packbits(table, axis=None, bitorder="little").tobytes(), "little")
