"""Three-valued evaluation of mask predicates over boxes of rank coordinates.

A *box* gives each coordinate an integer interval. Integer expressions evaluate to intervals
(``+ - *``; ``//`` and ``%`` by positive divisors, ``%`` exact while the interval stays in
one period, else ``[0, c - 1]``; ``min max abs``; a lookup ``doc[b, m]`` gives the min and
max of the tensor over the index box, see ``masks.LookupTable``). Comparisons give TRUE
(every point of the box satisfies it), FALSE (none does) or UNKNOWN; ``and or not`` follow
Kleene logic; ``==`` is TRUE only between equal constants. Every rule is sound; correlated
uses of one coordinate (``max(px - 3, 0) + min(PX - px - 4, 0)``) may over-approximate.

:class:`BoxEvaluator` makes the common window formulas exact:

1. Top-level conjuncts are grouped by shared coordinates. Groups are independent over a box
   (a product): it is full iff every group is, empty iff some group is.
2. In a group, each query axis used non-linearly (under ``// % min max abs``, a lookup
   index, a product of non-constants, or a flat rank of a multi-axis grid) is split per
   coordinate value when it has at most ``split_limit`` points (at most ``split_limit ** 2``
   pieces) and the answers joined: per query row a NA window start is one number.
3. Group answers are cached by the group's projection of the boxes (one per axis interval).

:meth:`BoxEvaluator.key_region` bounds the keys allowed for some query of a query box:
comparisons bounding one key coordinate through ``+ -``, ``*`` or ``//`` by constants
(``start_x <= mx``, ``mx // 2 < start_x + 3``, ``m - M <= p - P``) give ranges, ``T[m] ==
R`` the first and last key whose value lies in R's interval; ``and`` intersects, ``or``
unites, ``not`` is pushed down; anything else keeps the whole axis unless FALSE on the box.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary, children, names, walk
from einscade.ir.ops import COMPARISONS
from einscade.ir.printer import print_expr

if TYPE_CHECKING:
    from einscade.passes.analysis.masks import Axes, LookupTable

FALSE, UNKNOWN, TRUE = 0, 1, 2  # Kleene: and = min, or = max, not = 2 - x


class Interval(NamedTuple):
    """The closed range ``[lo, hi]`` of values an expression takes on a box."""

    lo: int | float
    hi: int | float


Box = tuple[Interval, ...]
Env = dict[str, Interval]
Tables = dict[str, "LookupTable"]
ValueFn = Callable[[Env], Interval]
TruthFn = Callable[[Env], int]
RegionFn = Callable[[Env], list[Box]]


def _corners(op: Callable, a: Interval, b: Interval) -> Interval:
    """For operations monotone in each argument (``*``; ``//`` by a positive divisor)."""
    values = (op(a.lo, b.lo), op(a.lo, b.hi), op(a.hi, b.lo), op(a.hi, b.hi))
    return Interval(min(values), max(values))


def _mod(a: Interval, d: Interval) -> Interval:
    if d.lo == d.hi and a.lo // d.lo == a.hi // d.lo:
        return Interval(a.lo % d.lo, a.hi % d.lo)  # one period: % is a shift
    return Interval(0, d.hi - 1)


def _abs(a: Interval) -> Interval:
    if a.lo >= 0 or a.hi <= 0:
        return Interval(min(abs(a.lo), abs(a.hi)), max(abs(a.lo), abs(a.hi)))
    return Interval(0, max(-a.lo, a.hi))


_ARITH = {
    "+": lambda a, b: Interval(a.lo + b.lo, a.hi + b.hi),
    "-": lambda a, b: Interval(a.lo - b.hi, a.hi - b.lo),
    "*": lambda a, b: _corners(lambda x, y: x * y, a, b),
}
_DIVIDE = {"//": lambda a, d: _corners(lambda x, y: x // y, a, d), "%": _mod}
_CALLS = {
    "min": lambda a, b: Interval(min(a.lo, b.lo), min(a.hi, b.hi)),
    "max": lambda a, b: Interval(max(a.lo, b.lo), max(a.hi, b.hi)),
    "abs": _abs,
}


def _eq(a: Interval, b: Interval) -> int:
    if a.lo == a.hi == b.lo == b.hi:
        return TRUE
    return FALSE if a.hi < b.lo or b.hi < a.lo else UNKNOWN


_COMPARE = {
    "<=": lambda a, b: TRUE if a.hi <= b.lo else FALSE if a.lo > b.hi else UNKNOWN,
    "<": lambda a, b: TRUE if a.hi < b.lo else FALSE if a.lo >= b.hi else UNKNOWN,
    ">=": lambda a, b: TRUE if a.lo >= b.hi else FALSE if a.hi < b.lo else UNKNOWN,
    ">": lambda a, b: TRUE if a.lo > b.hi else FALSE if a.hi <= b.lo else UNKNOWN,
    "==": _eq,
    "!=": lambda a, b: TRUE - _eq(a, b),
}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def compile_value(expr: Expr, tables: Tables) -> ValueFn:
    """A function from an environment (coordinate name -> interval) to ``expr``'s interval."""
    match expr:
        case Num(value=v):
            constant = Interval(v, v)
            return lambda env: constant
        case Name(id=name):
            return lambda env: env[name]
        case Unary(op="-", operand=x):
            f, zero = compile_value(x, tables), Interval(0, 0)
            return lambda env: _ARITH["-"](zero, f(env))
        case Binary(op=op, lhs=a, rhs=b) if op in _ARITH:
            fa, fb, g = compile_value(a, tables), compile_value(b, tables), _ARITH[op]
            return lambda env: g(fa(env), fb(env))
        case Binary(op=op, lhs=a, rhs=b) if op in _DIVIDE:
            fa, fb, g = compile_value(a, tables), compile_value(b, tables), _DIVIDE[op]
            return lambda env: g(fa(env), _positive(fb(env), expr))
        case Call(fn=fn, args=args) if fn in _CALLS:
            fs, g = [compile_value(x, tables) for x in args], _CALLS[fn]
            return lambda env: g(*[f(env) for f in fs])
        case Access(tensor=tensor, indices=indices) if tensor in tables:
            table, fs = tables[tensor], [compile_value(i, tables) for i in indices]
            return lambda env: table.over([f(env) for f in fs])
    raise ValueError(f"mask predicate: cannot bound {print_expr(expr)!r} by intervals")


def _positive(divisor: Interval, expr: Expr) -> Interval:
    if divisor.lo <= 0:
        raise ValueError(
            f"mask predicate: {print_expr(expr)!r} needs a positive divisor, "
            f"got [{divisor.lo}, {divisor.hi}]"
        )
    return divisor


def compile_truth(expr: Expr, tables: Tables) -> TruthFn:
    """A function from an environment to TRUE / FALSE / UNKNOWN for a predicate."""
    match expr:
        case Unary(op="not", operand=x):
            f = compile_truth(x, tables)
            return lambda env: TRUE - f(env)
        case Binary(op="and" | "or" as op, lhs=a, rhs=b):
            fa, fb = compile_truth(a, tables), compile_truth(b, tables)
            stop, join = (FALSE, min) if op == "and" else (TRUE, max)  # short-circuit
            return lambda env: stop if (t := fa(env)) == stop else join(t, fb(env))
        case Binary(op=op, lhs=a, rhs=b) if op in COMPARISONS:
            fa, fb, cmp = compile_value(a, tables), compile_value(b, tables), _COMPARE[op]
            return lambda env: cmp(fa(env), fb(env))
    raise ValueError(f"mask predicate: {print_expr(expr)!r} is not a comparison or and/or/not")


def intersect_box(a: Box, b: Box) -> Box | None:
    box = tuple(Interval(max(x.lo, y.lo), min(x.hi, y.hi)) for x, y in zip(a, b, strict=True))
    return None if any(i.lo > i.hi for i in box) else box


def hull(a: Box, b: Box) -> Box:
    return tuple(Interval(min(x.lo, y.lo), max(x.hi, y.hi)) for x, y in zip(a, b, strict=True))


def merge_boxes(boxes: list[Box], limit: int = 8) -> list[Box]:
    """Merge boxes that overlap or touch into their hull (a superset); above ``limit``
    boxes, the hull of all (keeps unions of many per-row windows short)."""
    merged: list[Box] = []  # pairwise not touching
    for box in boxes:
        while (near := next((m for m in merged if _touch(m, box)), None)) is not None:
            merged.remove(near)
            box = hull(box, near)
        merged.append(box)
    return merged if len(merged) <= limit else [functools.reduce(hull, merged)]


def _touch(a: Box, b: Box) -> bool:
    return all(x.lo <= y.hi + 1 and y.lo <= x.hi + 1 for x, y in zip(a, b, strict=True))


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


@dataclass(frozen=True, slots=True)
class _RegionContext:
    """The key side, a group's key axes (a region: boxes over them) and the lookups."""

    key: Axes
    k_axes: tuple[int, ...]
    tables: Tables

    @property
    def full(self) -> Box:
        return tuple(Interval(0, self.key.extents[j] - 1) for j in self.k_axes)

    def bound(self, var: str, lo: float, hi: float) -> list[Box]:
        """The region where key coordinate ``var`` lies in [lo, hi]."""
        lo, hi = math.ceil(lo), math.floor(hi)
        if var in self.key.names:
            axis = self.key.names.index(var)
        else:  # the flat key rank of a multi-axis grid bounds its outermost axis
            axis, lo, hi = 0, max(lo, 0) // self.key.strides[0], hi // self.key.strides[0]
        pos, full = self.k_axes.index(axis), self.full
        lo, hi = max(lo, full[pos].lo), min(hi, full[pos].hi)
        return [full[:pos] + (Interval(lo, hi),) + full[pos + 1 :]] if lo <= hi else []


def _plan(expr: Expr, negate: bool, ctx: _RegionContext) -> RegionFn:
    """Region of keys allowed by ``expr`` (or its negation) for some query of the env's box."""
    match expr:
        case Unary(op="not", operand=x):
            return _plan(x, not negate, ctx)
        case Binary(op="and" | "or" as op, lhs=a, rhs=b):
            fa, fb = _plan(a, negate, ctx), _plan(b, negate, ctx)
            if (op == "and") != negate:
                return lambda env: _intersect_regions(fa(env), fb, env)
            return lambda env: merge_boxes(fa(env) + fb(env))
        case Binary(op=op, lhs=a, rhs=b) if op in COMPARISONS:
            return _comparison_plan(_NEGATED[op] if negate else op, a, b, ctx)
    return _opaque(compile_truth(Unary("not", expr) if negate else expr, ctx.tables), ctx)


def _intersect_regions(first: list[Box], second: RegionFn, env: Env) -> list[Box]:
    if not first:
        return []  # short-circuit: an empty conjunct empties the conjunction
    boxes = [intersect_box(a, b) for a in first for b in second(env)]
    return merge_boxes([b for b in boxes if b is not None])


def _opaque(truth: TruthFn, ctx: _RegionContext) -> RegionFn:
    full = [ctx.full]
    return lambda env: [] if truth(env) == FALSE else full


def _comparison_plan(op: str, a: Expr, b: Expr, ctx: _RegionContext) -> RegionFn:
    keys = {ctx.key.flat, *ctx.key.names}
    uses = [n for n in walk(Binary(op, a, b)) if isinstance(n, Name) and n.id in keys]
    if len(uses) == 1 and op != "!=":
        side, other = (a, b) if names(a) & keys else (b, a)
        side_op = op if side is a else _FLIPPED[op]
        chain = _isolate(side, keys)
        if chain is not None:
            return _chain_plan(side_op, side, other, chain, ctx)
        if op == "==" and isinstance(side, Access) and side.tensor in ctx.tables:
            found = _lookup_plan(side, other, keys, ctx)
            if found is not None:
                return found
    return _opaque(compile_truth(Binary(op, a, b), ctx.tables), ctx)


def _isolate(side: Expr, keys: set[str]) -> tuple[str, list[tuple[str, object]]] | None:
    """Peel ``side`` down to its key coordinate through +, -, * const, // const."""
    steps: list[tuple[str, object]] = []
    node = side
    while not (isinstance(node, Name) and node.id in keys):
        match node:
            case Binary(op="+" | "-" as op, lhs=x, rhs=y):
                keyed = bool(names(x) & keys)
                offset, node = (y, x) if keyed else (x, y)
                steps.append(("add" if op == "+" else "sub" if keyed else "rsub", offset))
                if any(isinstance(n, Access) or isinstance(getattr(n, "value", 0), float)
                       for n in walk(offset)):  # fmt: skip
                    return None  # offsets must be integers for strict bounds to round
            case Binary(op="//", lhs=x, rhs=Num(value=int() as d)) if d > 0:
                steps.append(("div", d))
                node = x
            case (Binary(op="*", lhs=x, rhs=Num(value=int() as d))
                  | Binary(op="*", lhs=Num(value=int() as d), rhs=x)) if d != 0:  # fmt: skip
                steps.append(("mul", d))
                node = x
            case Unary(op="-", operand=x):
                steps.append(("neg", None))
                node = x
            case _:
                return None
    return node.id, steps


def _chain_plan(op: str, side: Expr, other: Expr, chain, ctx: _RegionContext) -> RegionFn:  # type: ignore[no-untyped-def]
    var, steps = chain
    side_fn, other_fn = compile_value(side, ctx.tables), compile_value(other, ctx.tables)
    compiled = [(k, compile_value(a, ctx.tables) if k in _OFFSETS else a) for k, a in steps]

    def region(env: Env) -> list[Box]:
        # ``side``'s range over the whole key axis closes the open end of the bound.
        lo, hi = _INITIAL[op](side_fn(env), other_fn(env))
        for kind, arg in compiled:
            if lo > hi:
                return []
            lo, hi = _PEEL[kind](arg(env) if kind in _OFFSETS else arg, lo, hi)
        return ctx.bound(var, lo, hi) if lo <= hi else []

    return region


_OFFSETS = ("add", "sub", "rsub")
# Bounds on the integer key side ``s`` from ``s op u``.
_INITIAL = {
    "<=": lambda s, u: (s.lo, math.floor(u.hi)),
    "<": lambda s, u: (s.lo, math.ceil(u.hi) - 1),
    ">=": lambda s, u: (math.ceil(u.lo), s.hi),
    ">": lambda s, u: (math.floor(u.lo) + 1, s.hi),
    "==": lambda s, u: (max(s.lo, math.ceil(u.lo)), min(s.hi, math.floor(u.hi))),
}
# From ``f(x) in [lo, hi]`` to a range of ``x`` (a superset over the env's box).
_PEEL = {
    "add": lambda c, lo, hi: (lo - c.hi, hi - c.lo),  # x + c
    "sub": lambda c, lo, hi: (lo + c.lo, hi + c.hi),  # x - c
    "rsub": lambda c, lo, hi: (c.lo - hi, c.hi - lo),  # c - x
    "neg": lambda _, lo, hi: (-hi, -lo),
    "div": lambda d, lo, hi: (lo * d, hi * d + d - 1),  # x // d, d > 0
    "mul": lambda d, lo, hi: (-(-lo // d), hi // d) if d > 0 else (-(-hi // d), lo // d),
}


def _lookup_plan(side: Access, other: Expr, keys: set[str], ctx: _RegionContext):  # type: ignore[no-untyped-def]
    """``T[.., k, ..] == R``: keys whose lookup value can equal R lie between the first and the
    last position of the line holding a value in R's interval."""
    dims = [d for d, i in enumerate(side.indices) if isinstance(i, Name) and i.id in keys]
    if len(dims) != 1:
        return None
    dim, var = dims[0], side.indices[dims[0]].id  # type: ignore[union-attr]
    table, other_fn = ctx.tables[side.tensor], compile_value(other, ctx.tables)
    index_fns = [compile_value(i, ctx.tables) for i in side.indices]
    full = [ctx.full]

    def region(env: Env) -> list[Box]:
        fixed = [f(env) for f in index_fns]
        point = [int(i.lo) if d != dim else 0 for d, i in enumerate(fixed)]
        if any(i.lo != i.hi for d, i in enumerate(fixed) if d != dim) or any(
            not 0 <= v < n for v, n in zip(point, table.shape, strict=True)
        ):
            return full  # a varying line or an absent read: no bound from here
        u = other_fn(env)
        found = table.line(dim, point).positions(u.lo, u.hi)
        return [] if found is None else ctx.bound(var, *found)

    return region


class _Group(NamedTuple):
    """Conjuncts sharing coordinates: their axes, the query axes to split, compiled functions."""

    q_key: Callable[[Box], object]  # the group's projection of a query box (a cache key)
    k_axes: tuple[int, ...]
    k_key: Callable[[Box], object]
    split: tuple[int, ...]
    truth: TruthFn
    region: RegionFn


class BoxEvaluator:
    """Truth over (query box, key box) pairs and key regions of query boxes (module doc)."""

    def __init__(
        self, predicate: Expr | None, query: Axes, key: Axes, tables: Tables, split_limit: int = 16
    ):
        self.query, self.key, self.tables, self.split_limit = query, key, tables, split_limit
        conjuncts = [] if predicate is None else _conjuncts(predicate)
        unknown = set().union(*map(names, conjuncts)) - {query.flat, key.flat}
        for name in sorted(unknown - {*query.names, *key.names}):
            raise ValueError(f"mask predicate reads {name!r}: not a query or key coordinate "
                             "(bind sizes, params and other ranks first)")  # fmt: skip
        self.groups = [self._group(exprs) for exprs in self._connected(conjuncts)]
        self._truths: dict[tuple, int] = {}
        self._regions: dict[tuple, list[Box]] = {}

    def _labels(self, expr: Expr) -> set[tuple[str, int]]:
        used = names(expr)
        query = {("q", i) for n in used for i in self.query.indices_of(n)}
        return query | {("k", j) for n in used for j in self.key.indices_of(n)}

    def _connected(self, conjuncts: list[Expr]) -> list[list[Expr]]:
        groups: list[tuple[set[tuple[str, int]], list[Expr]]] = []
        for conjunct in conjuncts:
            labels = self._labels(conjunct)
            joined = [g for g in groups if g[0] & labels]
            groups = [g for g in groups if not g[0] & labels]
            exprs = [e for g in joined for e in g[1]] + [conjunct]
            groups.append((labels.union(*(g[0] for g in joined)), exprs))
        return [exprs for _, exprs in groups]

    def _group(self, exprs: list[Expr]) -> _Group:
        expr = functools.reduce(lambda a, b: Binary("and", a, b), exprs)
        labels = self._labels(expr)
        q_axes = tuple(sorted(i for side, i in labels if side == "q"))
        k_axes = tuple(sorted(j for side, j in labels if side == "k"))
        split = {i for n in _nonlinear_names(expr) for i in self.query.indices_of(n)}
        if self.query.flat in names(expr) and len(self.query.names) > 1:
            split |= set(range(len(self.query.names) - 1))  # makes the flat range contiguous
        plan = _plan(expr, False, _RegionContext(self.key, k_axes, self.tables))
        truth = compile_truth(expr, self.tables)
        return _Group(_getter(q_axes), k_axes, _getter(k_axes), tuple(sorted(split)), truth, plan)

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

    def _group_region(self, index: int, group: _Group, qbox: Box) -> list[Box]:
        key = (index, group.q_key(qbox))
        found = self._regions.get(key)
        if found is None:
            env: Env = {}
            self.key.bind(self.key.full_box(), env)
            found = []
            for piece in self._pieces(group, qbox):
                found = merge_boxes(found + group.region(self.query.bind(piece, env)))
            self._regions[key] = found
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


def _getter(axes: tuple[int, ...]) -> Callable[[Box], object]:
    return operator.itemgetter(*axes) if axes else lambda box: ()


def _conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "and":
        return _conjuncts(expr.lhs) + _conjuncts(expr.rhs)
    return [expr]


def _assign(box: Box, axes: tuple[int, ...], part: Box) -> Box | None:
    """``box`` with the given axes intersected with ``part``; None if empty."""
    wide = list(box)
    for j, interval in zip(axes, part, strict=True):
        wide[j] = interval
    return intersect_box(box, tuple(wide))


def _join(answers: Iterator[int]) -> int | None:
    """The common answer (None if there is none), else UNKNOWN; stops at a disagreement."""
    common = None
    for answer in answers:
        if answer == UNKNOWN or common not in (None, answer):
            return UNKNOWN
        common = answer
    return common
