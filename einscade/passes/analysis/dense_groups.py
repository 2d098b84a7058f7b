"""Exact answers for a group of conjuncts over few coordinates: a dense table of its points.

A group of conjuncts (see :class:`~einscade.passes.analysis.intervals.BoxEvaluator`) reads a
few query axes and a few key axes. On a grid those are short (a 2-D NATTEN window reads one
query axis and one key axis of 56 coordinates each), so the group's predicate evaluated at
every combination of them is a small boolean table (56 x 56 here), built with a handful of
array operations (the brute-force rule of ``BoundMask.evaluate``, with numpy). Over a box the table
answers exactly: a block of it is all true (TRUE), all false (FALSE) or mixed (UNKNOWN), and
the keys allowed (refused) by some query of a box are the true (false) entries of the
block's projection on the key axes. Exact answers are sound by definition, and never looser
than interval reasoning, whose splitting and caching they replace where they apply.

Tables are built when the group's coordinates have at most ``limit`` combinations (a
``p x m`` group of a long sequence does not qualify: that would be FlexAttention's dense
mask; interval reasoning handles it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary, children, names
from einscade.passes.analysis.interval_core import (
    FALSE,
    TRUE,
    UNKNOWN,
    Box,
    Interval,
    merge_boxes,
)
from einscade.passes.analysis.masks import Axes, LookupTable

DENSE_LIMIT = 1 << 16  # table entries at most (64 KiB of booleans)
MAX_BOXES = 8  # a region of more boxes is replaced by their hull (as ``merge_boxes``)


class DenseGroup:
    """The truth table of one group over its query axes ``q_axes`` and key axes ``k_axes``
    (table dims in that order), with box queries on it."""

    def __init__(self, allowed: np.ndarray, q_axes: tuple[int, ...], k_axes: tuple[int, ...]):
        self.allowed = allowed
        self.q_axes, self.k_axes = q_axes, k_axes
        self._q_dims = tuple(range(len(q_axes)))

    def truth(self, qbox: Box, kbox: Box) -> int:
        """TRUE / FALSE / UNKNOWN of the group over the two boxes (exact)."""
        return self.span_truth(_pick(qbox, self.q_axes), _pick(kbox, self.k_axes))

    def region(self, qbox: Box, fail: bool = False) -> list[Box]:
        """Boxes over ``k_axes`` holding exactly the keys allowed (``fail``: refused) by some
        query of ``qbox``; more than ``MAX_BOXES`` are replaced by their hull."""
        return self.span_region(_pick(qbox, self.q_axes), fail)

    def span_truth(self, qspans: Box, kspans: Box) -> int:
        """:meth:`truth` from the intervals of the group's own axes (query, then key)."""
        block = self.allowed[_slices(qspans + kspans)]
        count = int(np.count_nonzero(block))
        if count == 0:
            return FALSE
        return TRUE if count == block.size else UNKNOWN

    def span_region(self, qspans: Box, fail: bool = False) -> list[Box]:
        """:meth:`region` from the intervals of the group's query axes."""
        block = self.allowed[_slices(qspans)]
        if block.size == 0:
            return []
        hit = ~block.all(axis=self._q_dims) if fail else block.any(axis=self._q_dims)
        return _boxes(hit)


def build_dense_group(
    expr: Expr,
    query: Axes,
    key: Axes,
    q_axes: tuple[int, ...],
    k_axes: tuple[int, ...],
    tables: dict[str, LookupTable],
    limit: int = DENSE_LIMIT,
    read: set[str] | None = None,
) -> DenseGroup | None:
    """The table of ``expr`` (reading only coordinates of the given axes), or None when it
    would exceed ``limit`` entries or cannot be evaluated densely. ``read``: the names
    ``expr`` reads, when known."""
    extents = [query.extents[i] for i in q_axes] + [key.extents[j] for j in k_axes]
    if not extents or math.prod(extents) > limit:
        return None
    env = _coordinates(query, q_axes, 0, len(extents))
    env.update(_coordinates(key, k_axes, len(q_axes), len(extents)))
    if not (names(expr) if read is None else read) <= env.keys():
        return None
    lookups = {name: table.values.numpy() for name, table in tables.items()}
    try:
        with np.errstate(all="ignore"):
            value = np.asarray(_evaluate(expr, env, lookups))
    except (ZeroDivisionError, ValueError, KeyError, TypeError):
        return None  # e.g. a zero divisor somewhere: interval reasoning reports it
    allowed = np.broadcast_to(value.astype(bool), extents)
    return DenseGroup(np.ascontiguousarray(allowed), q_axes, k_axes)


def same_up_to_names(a: Expr, b: Expr, renamed: dict[str, str]) -> bool:
    """Whether ``a`` is ``b`` with the names of ``renamed`` replaced by their images (other
    names equal): two groups with the same formula on different axes of equal extents (a
    window per axis) then have the same table, built once."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        kind = type(x)
        if kind is not type(y):
            return False
        if kind is Name:
            if renamed.get(x.id, x.id) != y.id:  # type: ignore[union-attr]
                return False
        elif kind is Num:
            if type(x.value) is not type(y.value) or x.value != y.value:  # type: ignore[union-attr]
                return False
        elif kind is Binary:
            if x.op != y.op:  # type: ignore[union-attr]
                return False
            stack += ((x.lhs, y.lhs), (x.rhs, y.rhs))  # type: ignore[union-attr]
        elif kind is Unary:
            if x.op != y.op:  # type: ignore[union-attr]
                return False
            stack.append((x.operand, y.operand))  # type: ignore[union-attr]
        elif kind is Call or kind is Access:
            head = (x.fn, y.fn) if kind is Call else (x.tensor, y.tensor)  # type: ignore[union-attr]
            left, right = children(x), children(y)
            if head[0] != head[1] or len(left) != len(right):
                return False
            stack += zip(left, right, strict=True)
        else:
            return False
    return True


_BINARY = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide,
    "==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
    ">": np.greater, ">=": np.greater_equal, "and": np.logical_and, "or": np.logical_or,
}  # fmt: skip


def _evaluate(expr: Expr, env: dict[str, np.ndarray], lookups: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """``BoundMask.evaluate``'s rule with numpy (a microsecond per operation on small tables,
    a fifth of torch's): floor ``//``, Python ``%``, a zero divisor refused, lookup indices
    clamped (out-of-range reads are masked by the range conjuncts)."""
    match expr:
        case Num(value=v):
            return v
        case Name(id=name):
            return env[name]
        case Unary(op="not", operand=x):
            return np.logical_not(_evaluate(x, env, lookups))
        case Unary(op="-", operand=x):
            return np.negative(_evaluate(x, env, lookups))
        case Binary(op="//" | "%" as op, lhs=a, rhs=b):
            divisor = _evaluate(b, env, lookups)
            scalar = isinstance(divisor, int | float)  # a literal: no array check needed
            if divisor == 0 if scalar else np.any(np.asarray(divisor) == 0):
                raise ZeroDivisionError(op)
            fn = np.floor_divide if op == "//" else np.remainder
            return fn(_evaluate(a, env, lookups), divisor)
        case Binary(op=op, lhs=a, rhs=b) if op in _BINARY:
            return _BINARY[op](_evaluate(a, env, lookups), _evaluate(b, env, lookups))
        case Call(fn="min" | "max" as fn, args=(a, b)):
            pair = (_evaluate(a, env, lookups), _evaluate(b, env, lookups))
            return np.minimum(*pair) if fn == "min" else np.maximum(*pair)
        case Call(fn="abs", args=(a,)):
            return np.abs(_evaluate(a, env, lookups))
        case Access(tensor=name, indices=indices):
            table = lookups[name]
            gathers = [
                np.clip(_evaluate(i, env, lookups), 0, n - 1)
                for i, n in zip(indices, table.shape, strict=True)
            ]
            return table[tuple(np.broadcast_arrays(*gathers))]
    raise ValueError(f"dense group: cannot evaluate {type(expr).__name__}")


def _coordinates(axes: Axes, used: tuple[int, ...], first: int, dims: int):  # type: ignore[no-untyped-def]
    """Each used axis's coordinates along its own table dim; the flat rank when every axis is
    used (the group's labels include all axes whenever it reads the flat rank)."""
    env: dict[str, np.ndarray] = {}
    for offset, axis in enumerate(used):
        shape = [1] * dims
        shape[first + offset] = axes.extents[axis]
        env[axes.names[axis]] = np.arange(axes.extents[axis], dtype=np.int64).reshape(shape)
    if len(used) == len(axes.names):
        flat = sum(env[n] * s for n, s in zip(axes.names, axes.strides, strict=True))
        env.setdefault(axes.flat, flat)  # type: ignore[arg-type]
    return env


def _pick(box: Box, axes: Sequence[int]) -> Box:
    return tuple(box[a] for a in axes)


def _slices(spans: Box) -> tuple[slice, ...]:
    return tuple(slice(max(int(lo), 0), int(hi) + 1) for lo, hi in spans)


def _boxes(hit: np.ndarray) -> list[Box]:
    """The true entries of a boolean array as boxes: runs along the last axis, one box per
    run and index of the leading axes (touching ones merged by ``merge_boxes`` rules)."""
    if hit.ndim == 0:  # a group without key axes: all keys or none
        return [()] if hit else []
    if hit.ndim == 1:
        runs = _runs(hit)
        if len(runs) > MAX_BOXES:
            return [(Interval(runs[0][0], runs[-1][1]),)]
        return [(Interval(lo, hi),) for lo, hi in runs]

    boxes: list[Box] = []
    for lead in np.argwhere(hit.any(axis=-1)):
        point = tuple(Interval(int(c), int(c)) for c in lead)
        boxes += [point + (Interval(lo, hi),) for lo, hi in _runs(hit[tuple(lead)])]
    return merge_boxes(boxes, MAX_BOXES)


def _runs(line: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D boolean array, as (first, last) positions."""
    where = np.flatnonzero(line)
    if where.size == 0:
        return []
    first, last = int(where[0]), int(where[-1])
    if last - first + 1 == where.size:  # one run: the common case, without a diff
        return [(first, last)]
    breaks = np.flatnonzero(np.diff(where) > 1)
    starts = [first] + where[breaks + 1].tolist()
    ends = where[breaks].tolist() + [last]
    return list(zip(starts, ends, strict=True))
