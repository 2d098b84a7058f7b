"""Three-valued evaluation of mask predicates over boxes of rank coordinates.

The interval rules live in interval_core.py (every rule sound; correlated uses of one
coordinate may over-approximate) and the key regions in key_regions.py. :class:`BoxEvaluator`
makes the common window formulas exact:

1. Top-level conjuncts are grouped by shared coordinates. Groups are independent over a box
   (a product): it is full iff every group is, empty iff some group is.
2. A group whose coordinates have at most ``dense_limit`` combinations (a window on one
   axis of a grid: 56 x 56) is answered exactly from its dense truth table
   (dense_groups.py).
3. In another group, each query axis used non-linearly (under ``// % min max abs``, a lookup
   index, a product of non-constants, or a flat rank of a multi-axis grid) is split per
   coordinate value when it has at most ``split_limit`` points (at most ``split_limit ** 2``
   pieces) and the answers joined: per query row a NA window start is one number.
4. Group answers are cached by the group's projection of the boxes (one per axis interval).

:meth:`BoxEvaluator.key_region` bounds the keys allowed for some query of a query box;
:meth:`BoxEvaluator.fail_region` the keys that some query of the box may *not* allow, so a
key box meeting none of them is full without evaluating it. Regions are cached per query
piece, so tiles of different shapes share the work.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from einscade.ir.expr import Access, Binary, Call, Expr, Name, children, names
from einscade.passes.analysis.dense_groups import (
    DENSE_LIMIT,
    DenseGroup,
    build_dense_group,
    same_up_to_names,
)
from einscade.passes.analysis.interval_core import (
    FALSE,
    TRUE,
    UNKNOWN,
    Box,
    Env,
    Interval,
    RegionFn,
    Tables,
    TruthFn,
    ValueFn,
    compile_truth,
    compile_value,
    hull,
    intersect_box,
    meets,
    merge_boxes,
    merge_runs,
)
from einscade.passes.analysis.key_regions import RegionContext, plan_region

if TYPE_CHECKING:
    from einscade.passes.analysis.masks import Axes

__all__ = [
    "FALSE",
    "TRUE",
    "UNKNOWN",
    "Box",
    "BoxEvaluator",
    "Env",
    "Interval",
    "RegionFn",
    "Tables",
    "TruthFn",
    "ValueFn",
    "compile_truth",
    "compile_value",
    "hull",
    "intersect_box",
    "meets",
    "merge_boxes",
]


def _nonlinear_names(expr: Expr, nonlinear: bool = False) -> set[str]:
    """Names used under //, %, min/max/abs, a lookup, or a product of two non-constants."""
    match expr:
        case Name(id=name):
            return {name} if nonlinear else set()
        case Binary(op="//" | "%") | Call() | Access():
            nonlinear = True
        case Binary(op="*", lhs=a, rhs=b) if names(a) and names(b):
            nonlinear = True
    return set().union(*(_nonlinear_names(c, nonlinear) for c in children(expr)))


class _Group(NamedTuple):
    """Conjuncts sharing coordinates: their axes, the query axes to split, compiled functions."""

    q_key: Callable[[Box], object]  # the group's projection of a query box (a cache key)
    k_axes: tuple[int, ...]
    k_key: Callable[[Box], object]
    split: tuple[int, ...]
    truth: TruthFn
    region: RegionFn
    fail: RegionFn  # keys that some query may not allow (the negation's region)
    q_axes: tuple[int, ...]
    dense: DenseGroup | None  # exact answers from the group's table, when small enough


class BoxEvaluator:
    """Truth over (query box, key box) pairs and key regions of query boxes (module doc)."""

    def __init__(
        self,
        predicate: Expr | None,
        query: Axes,
        key: Axes,
        tables: Tables,
        split_limit: int = 16,
        dense_limit: int = DENSE_LIMIT,
    ):
        self.query, self.key, self.tables, self.split_limit = query, key, tables, split_limit
        self.dense_limit = dense_limit
        conjuncts = [] if predicate is None else _conjuncts(predicate)
        used = [names(c) for c in conjuncts]  # once per conjunct: walking trees is slow
        unknown = set().union(*used) - {query.flat, key.flat}
        for name in sorted(unknown - {*query.names, *key.names}):
            raise ValueError(f"mask predicate reads {name!r}: not a query or key coordinate "
                             "(bind sizes, params and other ranks first)")  # fmt: skip
        connected = self._connected(conjuncts, used)
        self._built: list[tuple[Expr, DenseGroup]] = []  # tables built so far, with formulas
        self.groups = [self._group(exprs, labels, read) for exprs, labels, read in connected]
        self._truths: dict[tuple, int] = {}
        self._regions: dict[tuple, list[Box]] = {}
        self._pieces_seen: dict[tuple, list[Box]] = {}

    def _labels(self, used: set[str]) -> set[tuple[str, int]]:
        query = {("q", i) for n in used for i in self.query.indices_of(n)}
        return query | {("k", j) for n in used for j in self.key.indices_of(n)}

    def _connected(self, conjuncts: list[Expr], used: list[set[str]]):  # type: ignore[no-untyped-def]
        """Conjuncts joined while they share coordinates: (exprs, labels, names read)."""
        groups: list[tuple[list[Expr], set[tuple[str, int]], set[str]]] = []
        for conjunct, read in zip(conjuncts, used, strict=True):
            labels = self._labels(read)
            joined = [g for g in groups if g[1] & labels]
            groups = [g for g in groups if not g[1] & labels]
            exprs = [e for g in joined for e in g[0]] + [conjunct]
            read = read.union(*(g[2] for g in joined))
            groups.append((exprs, labels.union(*(g[1] for g in joined)), read))
        return groups

    def _group(self, exprs: list[Expr], labels: set[tuple[str, int]], read: set[str]) -> _Group:
        expr = functools.reduce(lambda a, b: Binary("and", a, b), exprs)
        q_axes = tuple(sorted(i for side, i in labels if side == "q"))
        k_axes = tuple(sorted(j for side, j in labels if side == "k"))
        getters = _getter(q_axes), k_axes, _getter(k_axes)
        dense = self._shared_table(expr, q_axes, k_axes, read)
        if dense is None:
            dense = build_dense_group(
                expr, self.query, self.key, q_axes, k_axes, self.tables, self.dense_limit, read
            )
            if dense is not None:
                self._built.append((expr, dense))
        if dense is not None:  # exact answers: no interval plans needed
            return _Group(*getters, (), _never, _never, _never, q_axes, dense)  # type: ignore[arg-type]
        split = {i for n in _nonlinear_names(expr) for i in self.query.indices_of(n)}
        if self.query.flat in read and len(self.query.names) > 1:
            split |= set(range(len(self.query.names) - 1))  # makes the flat range contiguous
        context = RegionContext(self.key, k_axes, self.tables)
        plan, fail = plan_region(expr, False, context), plan_region(expr, True, context)
        truth = compile_truth(expr, self.tables)
        return _Group(*getters, tuple(sorted(split)), truth, plan, fail, q_axes, None)

    def _shared_table(self, expr, q_axes, k_axes, read) -> DenseGroup | None:  # type: ignore[no-untyped-def]
        """The table of an earlier group whose formula is this one's on other axes of the
        same extents (a window per axis of a grid): the same table, over these axes."""
        if self.query.flat in read or self.key.flat in read:
            return None
        for other_expr, other in self._built:
            renamed = _renaming(self.query, q_axes, other.q_axes)
            renamed.update(_renaming(self.key, k_axes, other.k_axes))
            complete = len(renamed) == len(q_axes) + len(k_axes)
            if complete and same_up_to_names(expr, other_expr, renamed):
                return DenseGroup(other.allowed, q_axes, k_axes)
        return None

    def _pieces(self, group: _Group, qbox: Box) -> Iterator[Box]:
        """The query box split per value of the group's small non-linear axes."""
        axes, count = [], 1
        for i in group.split:
            n = qbox[i].hi - qbox[i].lo + 1
            if 1 < n <= self.split_limit and count * n <= self.split_limit**2:
                axes.append(i)
                count *= n
        for values in itertools.product(*(range(qbox[i].lo, qbox[i].hi + 1) for i in axes)):
            box = list(qbox)
            for i, v in zip(axes, values, strict=True):
                box[i] = Interval(v, v)
            yield tuple(box)

    def _group_truth(self, index: int, group: _Group, qbox: Box, kbox: Box) -> int:
        key = (index, group.q_key(qbox), group.k_key(kbox))
        found = self._truths.get(key)
        if found is None:
            if group.dense is not None:
                found = self._truths[key] = group.dense.truth(qbox, kbox)
                return found
            env: Env = {}
            self.key.bind(kbox, env)
            pieces = (self.query.bind(piece, env) for piece in self._pieces(group, qbox))
            found = self._truths[key] = _join(group.truth(e) for e in pieces)
        return found  # type: ignore[return-value]

    def truth(self, qboxes: list[Box], kboxes: list[Box]) -> int:
        """TRUE if every pair of the boxes' points is allowed, FALSE if none is."""
        pairs = itertools.product(qboxes, kboxes)
        found = _join(self._pair_truth(qbox, kbox) for qbox, kbox in pairs)
        return FALSE if found is None else found

    def _pair_truth(self, qbox: Box, kbox: Box) -> int:
        answer = TRUE
        for index, group in enumerate(self.groups):
            answer = min(answer, self._group_truth(index, group, qbox, kbox))
            if answer == FALSE:
                break
        return answer

    def group_truth(self, index: int, qbox: Box, kbox: Box) -> int:
        """The truth of group ``index``'s conjuncts over the boxes (cached)."""
        return self._group_truth(index, self.groups[index], qbox, kbox)

    def group_region(self, index: int, qbox: Box, fail: bool = False) -> list[Box]:
        """Boxes over group ``index``'s key axes holding every key its conjuncts allow
        (``fail``: may refuse) for some query of ``qbox`` (cached)."""
        return self._group_region(index, self.groups[index], qbox, fail)

    def _group_region(self, index: int, group: _Group, qbox: Box, fail: bool = False) -> list[Box]:
        key = (index, fail, group.q_key(qbox))
        found = self._regions.get(key)
        if found is None and group.dense is not None:
            found = self._regions[key] = group.dense.region(qbox, fail)
        if found is None:
            parts: dict[Box, None] = {}  # distinct boxes in first-seen order
            for piece in self._pieces(group, qbox):
                parts.update(dict.fromkeys(self._piece_region(index, group, piece, fail)))
            found = self._regions[key] = merge_runs(list(parts))
        return found

    def _piece_region(self, index: int, group: _Group, piece: Box, fail: bool) -> list[Box]:
        """One piece's region, cached: query boxes of other tile shapes share their pieces."""
        key = (index, fail, group.q_key(piece))
        found = self._pieces_seen.get(key)
        if found is None:
            env: Env = {}
            self.key.bind(self.key.full_box(), env)
            plan = group.fail if fail else group.region
            found = self._pieces_seen[key] = plan(self.query.bind(piece, env))
        return found

    def key_region(self, qboxes: list[Box]) -> list[Box]:
        """Boxes of key coordinates holding every key allowed for some query of the boxes."""
        found: list[Box] = []
        for qbox in qboxes:
            boxes: list[Box] = [self.key.full_box()]
            for index, group in enumerate(self.groups):
                parts = self._group_region(index, group, qbox)
                assigned = (_assign(box, group.k_axes, part) for box in boxes for part in parts)
                boxes = [b for b in assigned if b is not None]
            found += boxes
        return merge_boxes(found)

    def fail_region(self, qboxes: list[Box]) -> list[Box]:
        """Boxes of key coordinates holding every key that some query of the boxes may not
        allow: a key box meeting none of them has every pair allowed. Unmerged (a union of
        per-group slabs: merging would give their hull, often the whole grid)."""
        found: dict[Box, None] = {}
        for qbox in qboxes:
            for index, group in enumerate(self.groups):
                found.update(dict.fromkeys(self._slabs(index, group, qbox)))
        return list(found)

    def _slabs(self, index: int, group: _Group, qbox: Box) -> list[Box]:
        """A group's fail region over the whole key grid, cached like the region."""
        key = (index, "slabs", group.q_key(qbox))
        found = self._regions.get(key)
        if found is None:
            full = self.key.full_box()
            parts = self._group_region(index, group, qbox, fail=True)
            wide = (_assign(full, group.k_axes, part) for part in parts)
            found = self._regions[key] = [box for box in wide if box is not None]
        return found


def _renaming(axes: Axes, mine: tuple[int, ...], theirs: tuple[int, ...]) -> dict[str, str]:
    """Names of ``mine`` to those of ``theirs`` (pairwise), or an empty dict when the axes
    differ in number or extent (no renaming makes the tables equal)."""
    if len(mine) != len(theirs):
        return {}
    pairs = zip(mine, theirs, strict=True)
    if any(axes.extents[i] != axes.extents[j] for i, j in pairs):
        return {}
    return {axes.names[i]: axes.names[j] for i, j in zip(mine, theirs, strict=True)}


def _never(env: Env) -> object:
    raise AssertionError("a group with a dense table is never evaluated by intervals")


def _getter(axes: tuple[int, ...]) -> Callable[[Box], object]:
    return operator.itemgetter(*axes) if axes else lambda box: ()


def _conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "and":
        return _conjuncts(expr.lhs) + _conjuncts(expr.rhs)
    return [expr]


def _assign(box: Box, axes: tuple[int, ...], part: Box) -> Box | None:
    """``box`` with the given axes intersected with ``part``; None if empty."""
    wide = list(box)
    for j, (lo, hi) in zip(axes, part, strict=True):
        old = wide[j]
        if lo > old[0] or hi < old[1]:
            lo, hi = max(lo, old[0]), min(hi, old[1])
            if lo > hi:
                return None
            wide[j] = Interval(lo, hi)
    return tuple(wide)


def _join(answers: Iterator[int]) -> int | None:
    """The common answer (None if there is none), else UNKNOWN; stops at a disagreement."""
    common = None
    for answer in answers:
        if answer == UNKNOWN or common not in (None, answer):
            return UNKNOWN
        common = answer
    return common
