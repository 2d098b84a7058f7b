"""Key and fail regions of an equality of lookups, ``T[.., m, ..] == U[.., p, ..]``, in a
few calls per query tile (documents: ``doc[b, m] == doc[b, p]``).

The general path (intervals.py, key_regions.py) answers such a mask through a group, its
pieces, an environment and generated interval code: ~50 Python calls per query tile. When
the whole predicate is that one comparison on 1-D query and key axes, with every other
lookup index a constant inside the tensor, the same answers follow directly from the two
lookup tables: for a query range [p0, p1] let ``u`` be the range of ``U`` over it; the keys
that may match are those between the first and last key whose ``T`` value lies in ``u``
(``_Line.positions``), and the keys that some query may refuse are every key unless ``u`` is
one value held by one contiguous run of ``T`` (then: the keys outside the run). These are
the exact answers of ``_lookup_plan`` (key_regions.py) for the same inputs, so layouts are
identical; any other shape of mask, a dense group or a query tile that the general path
would split per coordinate (``split_limit``) gets None and takes the general path.

:meth:`EqualLookup.tile_regions` answers every tile of a 1-D query tiling at once with array
operations (the same answers as :meth:`EqualLookup.regions` per tile): each tile's range of
``U`` is a segment min/max, and the first/last key of each value comes from the runs of equal
values of ``T``'s line (a packed document is one run), sorted by value. From those arrays a
tile inside one run gets its full key box (``TileRegions.full_box``) and a sampled grid row
its tiles' sizes and fullness (``TileRegions.grid_kinds``) without the general row code;
:meth:`EqualLookup.truth` judges boxes from the two lines' value ranges.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from einscade.ir.expr import Access, Binary, Expr, Name, Num
from einscade.passes.analysis.block_layout import KeyTile
from einscade.passes.analysis.interval_core import FALSE, TRUE, UNKNOWN, Box, Interval
from einscade.passes.analysis.masks import Axes, LookupTable

_FAR = 1 << 62
_EXACT = 1 << 53  # integer lookup values up to this magnitude compare exactly as float64


@dataclass(frozen=True)
class EqualLookup:
    """``key_table[key_point with key_dim = m] == query_table[query_point, query_dim = p]``
    on 1-D axes (see the module doc)."""

    key: Axes
    key_table: LookupTable
    key_dim: int
    key_point: tuple[int, ...]
    query_table: LookupTable
    query_dim: int
    query_point: tuple[int, ...]
    split_limit: int

    def regions(self, qboxes: list[Box], refusals: bool) -> tuple[list[Box], list[Box]] | None:
        """(key region, fail region) of a query tile as ``BoxEvaluator.key_region`` and
        ``fail_region`` give them (``refusals=False``: the whole grid may refuse), or None
        where the general path must answer."""
        if len(qboxes) != 1:
            return None
        ((p0, p1),) = qboxes[0]
        if 1 < p1 - p0 + 1 <= self.split_limit:
            return None  # the general path joins per-query pieces: other regions
        indices = [Interval(v, v) for v in self.query_point]
        indices[self.query_dim] = Interval(p0, p1)
        u0, u1 = self.query_table.over(indices)
        line = self.key_table.line(self.key_dim, list(self.key_point))
        found = line.positions(u0, u1)
        full = self.key.full_box()
        region = [] if found is None else self._bound(found[0], found[1])
        if not region:
            return [], [full]
        if not refusals or u0 != u1 or line.minmax(*found) != (u0, u0):
            return region, [full]
        return region, self._bound(-_FAR, found[0] - 1) + self._bound(found[1] + 1, _FAR)

    def tile_regions(self, extent: int, tile: int) -> TileRegions | None:
        """The answers of :meth:`regions` for every tile ``[i * tile, (i + 1) * tile - 1]``
        of the query axis (``extent`` queries, the tail tile clipped), or None where the
        tables are not integer (the array path compares values exactly only for those)."""
        keys, query = self._key_runs, self._query_values
        if keys is None or query is None:
            return None
        starts = np.arange(0, extent, tile)
        sizes = np.minimum(starts + tile, extent) - starts
        u0 = np.minimum.reduceat(query[:extent], starts)
        u1 = np.maximum.reduceat(query[:extent], starts)
        values, first, last, exact = keys
        i = np.searchsorted(values, u0, "left")
        j = np.searchsorted(values, u1, "right") - 1
        found = i <= j
        if exact is True:  # one run per value, in value order: first / last keys increase
            f0 = first[np.minimum(i, len(first) - 1)]
            f1 = last[np.maximum(j, 0)]
        else:  # segment min / max over [i, j] (reduceat bound pairs; a sentinel for j + 1)
            bounds = np.stack([np.where(found, i, 0), np.where(found, j + 1, 1)], 1).ravel()
            f0 = np.minimum.reduceat(np.append(first, 0), bounds)[::2]
            f1 = np.maximum.reduceat(np.append(last, 0), bounds)[::2]
        lo, hi = np.maximum(f0, 0), np.minimum(f1, self.key.extents[0] - 1)
        region = found & (lo <= hi)
        run = region & (u0 == u1)
        if exact is not True:
            run &= exact[np.where(found, i, 0)]
        general = (sizes > 1) & (sizes <= self.split_limit)
        return TileRegions(
            self.key.full_box(), lo.tolist(), hi.tolist(), region.tolist(), run.tolist(),
            general.tolist(),
        )  # fmt: skip

    def truth(self, qboxes: list[Box], kboxes: list[Box]) -> int | None:
        """``BoxEvaluator.truth`` of the boxes (the comparison of the two sides' value ranges),
        or None where the general path must answer (a query tile it splits per coordinate,
        or non-integer tables)."""
        query, keys = self._query_values, self._key_values
        if query is None or keys is None:
            return None
        if any(1 < p1 - p0 + 1 <= self.split_limit for ((p0, p1),) in qboxes):
            return None
        common = None
        query_sorted, keys_sorted = self._sorted
        for ((p0, p1),) in qboxes:
            u0, u1 = _span(query, p0, p1, query_sorted)
            for ((k0, k1),) in kboxes:
                answer = _equal(u0, u1, *_span(keys, k0, k1, keys_sorted))
                if answer == UNKNOWN or common not in (None, answer):
                    return UNKNOWN
                common = answer
        return FALSE if common is None else common

    @functools.cached_property
    def _query_values(self) -> np.ndarray | None:
        same = (self.query_table, self.query_dim, self.query_point) == (
            self.key_table, self.key_dim, self.key_point
        )  # fmt: skip
        if same:  # ``doc[b, m] == doc[b, p]``: one line
            return self._key_values
        return _integer_values(self.query_table, self.query_dim, self.query_point)

    @functools.cached_property
    def _sorted(self) -> tuple[bool, bool]:
        """Whether the query and the key line never decrease (a range's ends are then its
        minimum and maximum)."""
        keys = self._key_runs is not None and self._key_runs[3] is True  # runs in value order
        if self._query_values is self._key_values:
            return keys, keys
        query = self._query_values
        return query is not None and bool((query[1:] >= query[:-1]).all()), keys

    @functools.cached_property
    def _key_values(self) -> np.ndarray | None:
        return _integer_values(self.key_table, self.key_dim, self.key_point)

    @functools.cached_property
    def _key_runs(self):  # type: ignore[no-untyped-def]
        """(distinct values of the key line, sorted; first key; last key; whether the value's
        keys are contiguous: an array, or True for all), or None for a non-integer line."""
        values = self._key_values
        if values is None:
            return None
        starts = np.flatnonzero(values[1:] != values[:-1]) + 1
        ends = np.append(starts, len(values)) - 1
        starts = np.concatenate(([0], starts))
        run_values = values[starts]
        if bool((run_values[1:] > run_values[:-1]).all()):  # sorted runs (packed documents)
            return run_values, starts, ends, True
        order = np.argsort(run_values, kind="stable")  # runs of a value by position
        run_values = run_values[order]
        group = np.flatnonzero(np.diff(run_values, prepend=run_values[0] - 1))
        group_ends = np.append(group[1:], len(order)) - 1
        first, last = starts[order][group], ends[order][group_ends]
        counts = np.add.reduceat((ends - starts + 1)[order], group)
        return run_values[group], first, last, counts == last - first + 1

    def _bound(self, lo: int, hi: int) -> list[Box]:
        lo, hi = max(lo, 0), min(hi, self.key.extents[0] - 1)
        return [(Interval(lo, hi),)] if lo <= hi else []


class TileKind(NamedTuple):
    """What the cost model reads of a key tile: its size and whether it is full."""

    size: int
    full: bool


@dataclass(frozen=True, slots=True)
class TileRegions:
    """:meth:`EqualLookup.regions` of every tile of a 1-D query tiling, as lists indexed by
    tile: the key region ``[lo, hi]`` (where ``region``), whether the keys some query may
    refuse are those outside it (``run``: every query's value is one contiguous run of keys;
    else every key) and whether the general path must answer the tile (``general``)."""

    full: Box
    lo: list[int]
    hi: list[int]
    region: list[bool]
    run: list[bool]
    general: list[bool]

    def full_box(self, index: int, pad: int) -> KeyTile | None:
        """The one full key box that ``key_boxes.box_row`` gives tile ``index`` when its
        padded region lies inside the run of keys no query refuses (the common case of a
        tile inside one document), else None (ask ``box_row``)."""
        if self.general[index] or not self.run[index]:
            return None
        lo, hi = self.lo[index], self.hi[index]
        length = self.full[0].hi + 1
        padded = min(-(-(hi - lo + 1) // pad) * pad, length)  # key_boxes.pad_box
        start = max(0, min(lo, length - padded))
        if start < lo or start + padded - 1 > hi:
            return None  # the padding reaches keys that some query refuses
        return KeyTile((start,), (padded,), True)

    def grid_kinds(self, index: int, tile: int, refusals: bool) -> list[TileKind] | None:
        """The (size, full) of each key tile of ``tile`` keys that ``grid_rows.grid_row``
        visits for tile ``index`` left unevaluated, in key order (what the cost model reads
        of a sampled row), or None where the general path answers the tile. A visited key
        tile is partial where it meets a key some query may refuse, else full."""
        if self.general[index]:
            return None
        if not self.region[index]:
            return []
        lo, hi, length = self.lo[index], self.hi[index], self.full[0].hi + 1
        first, last = lo // tile, hi // tile
        if refusals and self.run[index]:  # refusing keys: [0, lo - 1] and [hi + 1, end]
            head = (lo - 1) // tile + 1 if lo > 0 else first
            tail = (hi + 1) // tile if hi < length - 1 else last + 1
        else:
            head, tail = last + 1, last + 1  # every key may be refused
        head, tail = min(max(head, first), last + 1), min(max(tail, head), last + 1)
        kinds = [TileKind(tile, False)] * (head - first) + [TileKind(tile, True)] * (tail - head)
        kinds += [TileKind(tile, False)] * (last + 1 - tail)
        end = length - last * tile  # the grid's last tile may be short
        if end < tile:
            kinds[-1] = TileKind(end, kinds[-1].full)
        return kinds

    def regions(self, index: int, refusals: bool) -> tuple[list[Box], list[Box]] | None:
        """(key region, fail region) of tile ``index``, as :meth:`EqualLookup.regions`."""
        if self.general[index]:
            return None
        if not self.region[index]:
            return [], [self.full]
        lo, hi = self.lo[index], self.hi[index]
        region: list[Box] = [(Interval(lo, hi),)]
        if not (refusals and self.run[index]):
            return region, [self.full]
        last = self.full[0].hi
        fail: list[Box] = [(Interval(0, lo - 1),)] if lo > 0 else []
        if hi < last:
            fail.append((Interval(hi + 1, last),))
        return region, fail


def _equal(u0: int, u1: int, t0: int, t1: int) -> int:
    """Interval equality of ``[u0, u1]`` and ``[t0, t1]``, as the interval code judges it."""
    if u0 == u1 == t0 == t1:
        return TRUE
    return FALSE if u1 < t0 or t1 < u0 else UNKNOWN


def _span(values: np.ndarray, lo: int, hi: int, ordered: bool) -> tuple[int, int]:
    """Minimum and maximum of ``values[lo : hi + 1]`` (its ends when ``ordered``)."""
    if ordered:
        return values.item(lo), values.item(hi)
    part = values[lo : hi + 1]
    return int(part.min()), int(part.max())


def _integer_values(table: LookupTable, dim: int, point: tuple[int, ...]) -> np.ndarray | None:
    """The line of ``table`` along ``dim`` through ``point`` as int64 numpy (no range tables
    built), or None unless its values are integers that compare exactly as float64 (the
    per-tile path bisects float64 values)."""
    index: list[int | slice] = list(point)
    index[dim] = slice(None)
    values = table.values[tuple(index)]
    if values.is_floating_point() or values.is_complex() or len(values) == 0:
        return None
    array = values.numpy().astype(np.int64, copy=False)
    if max(-int(array.min()), int(array.max())) >= _EXACT:
        return None
    return array


def equal_lookup(
    predicate: Expr | None, query: Axes, key: Axes, tables: dict[str, LookupTable],
    split_limit: int,
) -> EqualLookup | None:  # fmt: skip
    """The :class:`EqualLookup` of a bound predicate of that form, else None."""
    if len(query.names) != 1 or len(key.names) != 1:
        return None
    if not (isinstance(predicate, Binary) and predicate.op == "=="):
        return None
    for key_side, query_side in ((predicate.lhs, predicate.rhs), (predicate.rhs, predicate.lhs)):
        key_read, query_read = _read(key_side, key, tables), _read(query_side, query, tables)
        if key_read is not None and query_read is not None:
            (kt, kd, kp), (qt, qd, qp) = key_read, query_read
            return EqualLookup(key, kt, kd, kp, qt, qd, qp, split_limit)
    return None


def _read(side: Expr, own: Axes, tables: dict[str, LookupTable]):  # type: ignore[no-untyped-def]
    """(table, dim, point) when ``side`` reads a table at ``own``'s coordinate in exactly one
    dim and at in-range integer constants elsewhere (so it reads no other coordinate)."""
    if not isinstance(side, Access) or side.tensor not in tables:
        return None
    table = tables[side.tensor]
    own_names = {own.flat, *own.names}
    dims, point = [], []
    for d, index in enumerate(side.indices):
        if isinstance(index, Name) and index.id in own_names:
            dims.append(d)
            point.append(0)
        elif isinstance(index, Num) and isinstance(index.value, int):
            if not 0 <= index.value < table.shape[d]:
                return None  # an absent read: the general path's range rules decide
            point.append(index.value)
        else:
            return None
    if len(dims) != 1 or table.shape[dims[0]] < own.extents[0]:
        return None  # a line shorter than the axis: reads past it need range conjuncts
    return table, dims[0], tuple(point)
