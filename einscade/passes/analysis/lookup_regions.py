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
"""

from __future__ import annotations

from dataclasses import dataclass

from einscade.ir.expr import Access, Binary, Expr, Name, Num
from einscade.passes.analysis.interval_core import Box, Interval
from einscade.passes.analysis.masks import Axes, LookupTable

_FAR = 1 << 62


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

    def _bound(self, lo: int, hi: int) -> list[Box]:
        lo, hi = max(lo, 0), min(hi, self.key.extents[0] - 1)
        return [(Interval(lo, hi),)] if lo <= hi else []


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
