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

:meth:`BoxEvaluator.fail_region` is the same for the negated predicate (pushed down): the keys
that some query of the box may *not* allow, so a key box meeting none of them is full without
evaluating it; ``T[m] != v`` gives the keys outside the run of v when v's keys are contiguous.
Regions are cached per query piece, so tiles of different shapes share the work; integer
expressions compile to generated straight-line Python (:func:`compile_value`), cached per
expression.

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


# Value intervals are plain ``(lo, hi)`` tuples on the hot path (an Interval is a tuple too,
# so both mix): building a NamedTuple costs a Python call per operation.


def _corners(op: Callable, a: Interval, b: Interval) -> Interval:
    """For operations monotone in each argument (``*``; ``//`` by a positive divisor)."""
    values = (op(a[0], b[0]), op(a[0], b[1]), op(a[1], b[0]), op(a[1], b[1]))
    return (min(values), max(values))  # type: ignore[return-value]


def _mod(a: Interval, d: Interval) -> Interval:
    if d[0] == d[1] and a[0] // d[0] == a[1] // d[0]:
        return (a[0] % d[0], a[1] % d[0])  # type: ignore[return-value]  # one period: a shift
    return (0, d[1] - 1)  # type: ignore[return-value]


def _abs(a: Interval) -> Interval:
    if a[0] >= 0 or a[1] <= 0:
        return (min(abs(a[0]), abs(a[1])), max(abs(a[0]), abs(a[1])))  # type: ignore[return-value]
    return (0, max(-a[0], a[1]))  # type: ignore[return-value]


_ARITH = {
    "+": lambda a, b: (a[0] + b[0], a[1] + b[1]),
    "-": lambda a, b: (a[0] - b[1], a[1] - b[0]),
    "*": lambda a, b: _corners(lambda x, y: x * y, a, b),
}
_DIVIDE = {"//": lambda a, d: _corners(lambda x, y: x // y, a, d), "%": _mod}
_CALLS = {
    "min": lambda a, b: (min(a[0], b[0]), min(a[1], b[1])),
    "max": lambda a, b: (max(a[0], b[0]), max(a[1], b[1])),
    "abs": _abs,
}


def _eq(a: Interval, b: Interval) -> int:
    if a[0] == a[1] == b[0] == b[1]:
        return TRUE
    return FALSE if a[1] < b[0] or b[1] < a[0] else UNKNOWN


_COMPARE = {
    "<=": lambda a, b: TRUE if a[1] <= b[0] else FALSE if a[0] > b[1] else UNKNOWN,
    "<": lambda a, b: TRUE if a[1] < b[0] else FALSE if a[0] >= b[1] else UNKNOWN,
    ">=": lambda a, b: TRUE if a[0] >= b[1] else FALSE if a[1] < b[0] else UNKNOWN,
    ">": lambda a, b: TRUE if a[0] > b[1] else FALSE if a[1] <= b[0] else UNKNOWN,
    "==": _eq,
    "!=": lambda a, b: TRUE - _eq(a, b),
}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def compile_value(expr: Expr, tables: Tables) -> ValueFn:
    """A function from an environment (coordinate name -> interval) to ``expr``'s interval."""
    fast = _value_fn(expr, tables)
    return lambda env: Interval(*fast(env))


def _value_fn(expr: Expr, tables: Tables) -> ValueFn:
    """:func:`compile_value` returning plain ``(lo, hi)`` tuples (the hot path): one
    generated straight-line Python function per expression (no call per node). Functions of
    expressions that read no lookup tensor are cached: the same window bound appears in the
    truth, region and fail plans of a mask, and again in the next mask of the same shape."""
    found = _PURE.get(expr)
    if found is not None:
        return found
    if any(isinstance(node, Access) for node in walk(expr)):
        return _generate(expr, tables)
    if len(_PURE) >= _PURE_LIMIT:
        _PURE.clear()
    found = _PURE[expr] = _generate(expr, {})
    return found


_PURE: dict[Expr, ValueFn] = {}  # generated functions of lookup-free expressions
_PURE_LIMIT = 4096


def _generate(expr: Expr, tables: Tables) -> ValueFn:
    emitter = _Emitter(tables)
    lo, hi = emitter.emit(expr)
    body = "\n".join(f"    {line}" for line in emitter.lines)
    source = f"def value(env):\n{body}\n    return ({lo}, {hi})\n"
    exec(compile(source, "<interval>", "exec"), emitter.namespace)  # our own generated text
    return emitter.namespace["value"]  # type: ignore[no-any-return]


class _Emitter:
    """Interval arithmetic as generated code: each node's bounds become two local names.
    The rules are the ones of the module doc (and of ``_ARITH``, ``_DIVIDE``, ``_CALLS``)."""

    def __init__(self, tables: Tables):
        self.tables = tables
        self.lines: list[str] = []
        self.namespace: dict[str, object] = {"_positive": _positive, "Interval": Interval}
        self.loaded: dict[str, tuple[str, str]] = {}
        self.count = 0

    def _fresh(self) -> tuple[str, str]:
        self.count += 1
        return f"l{self.count}", f"h{self.count}"

    def _constant(self, value: object) -> str:
        name = f"c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def emit(self, expr: Expr) -> tuple[str, str]:
        match expr:
            case Num(value=v):
                name = self._constant(v)
                return name, name
            case Name(id=name):
                if name not in self.loaded:
                    lo, hi = self.loaded[name] = self._fresh()
                    self.lines.append(f"{lo}, {hi} = env[{name!r}]")
                return self.loaded[name]
            case Unary(op="-", operand=x):
                a0, a1 = self.emit(x)
                return self._set(f"-{a1}", f"-{a0}")
            case Binary(op="+", lhs=a, rhs=b):
                (a0, a1), (b0, b1) = self.emit(a), self.emit(b)
                return self._set(f"{a0} + {b0}", f"{a1} + {b1}")
            case Binary(op="-", lhs=a, rhs=b):
                (a0, a1), (b0, b1) = self.emit(a), self.emit(b)
                return self._set(f"{a0} - {b1}", f"{a1} - {b0}")
            case Binary(op="*" | "//" as op, lhs=a, rhs=b):
                return self._corners(op, expr, self.emit(a), self.emit(b))
            case Binary(op="%", lhs=a, rhs=b):
                return self._mod(expr, self.emit(a), self.emit(b))
            case Call(fn="min" | "max" as fn, args=(a, b)):
                (a0, a1), (b0, b1) = self.emit(a), self.emit(b)
                return self._set(f"{fn}({a0}, {b0})", f"{fn}({a1}, {b1})")
            case Call(fn="abs", args=(a,)):
                a0, a1 = self.emit(a)
                lo, hi = self._fresh()
                self.lines += [
                    f"if {a0} >= 0 or {a1} <= 0:",
                    f"    {lo}, {hi} = min(abs({a0}), abs({a1})), max(abs({a0}), abs({a1}))",
                    "else:",
                    f"    {lo}, {hi} = 0, max(-{a0}, {a1})",
                ]
                return lo, hi
            case Access(tensor=tensor, indices=indices) if tensor in self.tables:
                bounds = [self.emit(i) for i in indices]
                table = self._constant(self.tables[tensor])
                pairs = ", ".join(f"({a}, {b})" for a, b in bounds)
                lo, hi = self._fresh()
                self.lines.append(f"{lo}, {hi} = {table}.over([{pairs}])")
                return lo, hi
        raise ValueError(f"mask predicate: cannot bound {print_expr(expr)!r} by intervals")

    def _set(self, lo_text: str, hi_text: str) -> tuple[str, str]:
        lo, hi = self._fresh()
        self.lines.append(f"{lo}, {hi} = {lo_text}, {hi_text}")
        return lo, hi

    def _check(self, expr: Expr, d0: str, d1: str) -> None:
        node = self._constant(expr)
        self.lines.append(f"if {d0} <= 0: _positive(({d0}, {d1}), {node})")

    def _corners(self, op, expr, a, b) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        (a0, a1), (b0, b1) = a, b
        if op == "//":
            self._check(expr, b0, b1)
        corners = self._fresh()[0]
        self.lines.append(
            f"{corners} = ({a0} {op} {b0}, {a0} {op} {b1}, {a1} {op} {b0}, {a1} {op} {b1})"
        )
        return self._set(f"min({corners})", f"max({corners})")

    def _mod(self, expr, a, d) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        (a0, a1), (d0, d1) = a, d
        self._check(expr, d0, d1)
        lo, hi = self._fresh()
        self.lines += [
            f"if {d0} == {d1} and {a0} // {d0} == {a1} // {d0}:",
            f"    {lo}, {hi} = {a0} % {d0}, {a1} % {d0}",
            "else:",
            f"    {lo}, {hi} = 0, {d1} - 1",
        ]
        return lo, hi


def _positive(divisor: Interval, expr: Expr) -> Interval:
    if divisor[0] <= 0:
        raise ValueError(
            f"mask predicate: {print_expr(expr)!r} needs a positive divisor, "
            f"got [{divisor[0]}, {divisor[1]}]"
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
            fa, fb, cmp = _value_fn(a, tables), _value_fn(b, tables), _COMPARE[op]
            return lambda env: cmp(fa(env), fb(env))
    raise ValueError(f"mask predicate: {print_expr(expr)!r} is not a comparison or and/or/not")


def intersect_box(a: Box, b: Box) -> Box | None:
    box = []
    for (alo, ahi), (blo, bhi) in zip(a, b, strict=True):
        lo, hi = max(alo, blo), min(ahi, bhi)
        if lo > hi:
            return None
        box.append(Interval(lo, hi))
    return tuple(box)


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


def _merge(boxes: list[Box]) -> list[Box]:
    """:func:`merge_boxes`, with a sort-and-sweep for many boxes of one axis."""
    if len(boxes) <= 8 or len(boxes[0]) != 1:
        return merge_boxes(boxes)
    merged: list[list] = []  # type: ignore[type-arg]
    for ((lo, hi),) in sorted(boxes):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    found = [(Interval(lo, hi),) for lo, hi in merged]
    return found if len(found) <= 8 else [(Interval(merged[0][0], merged[-1][1]),)]


def meets(a: Box, b: Box) -> bool:
    """Whether two boxes share a point."""
    for (alo, ahi), (blo, bhi) in zip(a, b, strict=True):  # noqa: SIM110 (hot: no generator)
        if ahi < blo or bhi < alo:
            return False
    return True


def _touch(a: Box, b: Box) -> bool:
    for (alo, ahi), (blo, bhi) in zip(a, b, strict=True):  # noqa: SIM110 (hot: no generator)
        if alo > bhi + 1 or blo > ahi + 1:
            return False
    return True


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
        whole = self.key.full_box()
        return tuple(whole[j] for j in self.k_axes)

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
    if len(uses) == 1 and op == "!=":
        side, other = (a, b) if names(a) & keys else (b, a)
        if isinstance(side, Access) and side.tensor in ctx.tables:
            found = _lookup_plan(side, other, keys, ctx, differ=True)
            if found is not None:
                return found
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
    side_fn, other_fn = _value_fn(side, ctx.tables), _value_fn(other, ctx.tables)
    compiled = [(k, _value_fn(a, ctx.tables) if k in _OFFSETS else a) for k, a in steps]

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
    "<=": lambda s, u: (s[0], math.floor(u[1])),
    "<": lambda s, u: (s[0], math.ceil(u[1]) - 1),
    ">=": lambda s, u: (math.ceil(u[0]), s[1]),
    ">": lambda s, u: (math.floor(u[0]) + 1, s[1]),
    "==": lambda s, u: (max(s[0], math.ceil(u[0])), min(s[1], math.floor(u[1]))),
}
# From ``f(x) in [lo, hi]`` to a range of ``x`` (a superset over the env's box).
_PEEL = {
    "add": lambda c, lo, hi: (lo - c[1], hi - c[0]),  # x + c
    "sub": lambda c, lo, hi: (lo + c[0], hi + c[1]),  # x - c
    "rsub": lambda c, lo, hi: (c[0] - hi, c[1] - lo),  # c - x
    "neg": lambda _, lo, hi: (-hi, -lo),
    "div": lambda d, lo, hi: (lo * d, hi * d + d - 1),  # x // d, d > 0
    "mul": lambda d, lo, hi: (-(-lo // d), hi // d) if d > 0 else (-(-hi // d), lo // d),
}


def _lookup_plan(side: Access, other: Expr, keys: set[str], ctx: _RegionContext, differ=False):  # type: ignore[no-untyped-def]
    """``T[.., k, ..] == R``: keys whose lookup value can equal R lie between the first and the
    last position of the line holding a value in R's interval. ``differ``: ``T[..] != R``
    instead; where R is one value v held by one contiguous run of the line, the keys outside
    the run (a packed document's neighbours), else every key."""
    dims = [d for d, i in enumerate(side.indices) if isinstance(i, Name) and i.id in keys]
    if len(dims) != 1:
        return None
    dim, var = dims[0], side.indices[dims[0]].id  # type: ignore[union-attr]
    table, other_fn = ctx.tables[side.tensor], _value_fn(other, ctx.tables)
    index_fns = [_value_fn(i, ctx.tables) for i in side.indices]
    full = [ctx.full]

    def region(env: Env) -> list[Box]:
        fixed = [f(env) for f in index_fns]
        point = [int(i[0]) if d != dim else 0 for d, i in enumerate(fixed)]
        if any(i[0] != i[1] for d, i in enumerate(fixed) if d != dim) or any(
            not 0 <= v < n for v, n in zip(point, table.shape, strict=True)
        ):
            return full  # a varying line or an absent read: no bound from here
        u, line = other_fn(env), table.line(dim, point)
        found = line.positions(u[0], u[1])
        if not differ:
            return [] if found is None else ctx.bound(var, *found)
        if found is None:
            return full  # no key holds R's value: every key differs
        if u[0] != u[1] or line.minmax(*found) != (u[0], u[0]):
            return full
        return ctx.bound(var, -_FAR, found[0] - 1) + ctx.bound(var, found[1] + 1, _FAR)

    return region


_FAR = 1 << 62  # an unbounded end of a key range (clipped to the axis by ``bound``)


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
        self._product = self._product_axes()
        self._truths: dict[tuple, int] = {}
        self._regions: dict[tuple, list[Box]] = {}
        self._pieces_seen: dict[tuple, list[Box]] = {}

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
        context = _RegionContext(self.key, k_axes, self.tables)
        plan, fail = _plan(expr, False, context), _plan(expr, True, context)
        truth = compile_truth(expr, self.tables)
        split_axes = tuple(sorted(split))
        getters = _getter(q_axes), k_axes, _getter(k_axes)
        return _Group(*getters, split_axes, truth, plan, fail, q_axes)

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

    def _group_region(self, index: int, group: _Group, qbox: Box, fail: bool = False) -> list[Box]:
        key = (index, fail, group.q_key(qbox))
        found = self._regions.get(key)
        if found is None:
            parts: dict[Box, None] = {}  # distinct boxes in first-seen order
            for piece in self._pieces(group, qbox):
                parts.update(dict.fromkeys(self._piece_region(index, group, piece, fail)))
            found = self._regions[key] = _merge(list(parts))
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

    def axis_groups(self) -> tuple[int | None, ...] | None:
        """Per axis, the group that reads it (None: no conjunct does), when the mask is a
        product over axes: every group reads one query axis, the same key axis and no flat
        rank (NATTEN windows, HaloNet, blocked and folded grid attention). Else None."""
        return self._product

    def _product_axes(self) -> tuple[int | None, ...] | None:
        if self.query.extents != self.key.extents:
            return None
        found: list[int | None] = [None] * len(self.query.names)
        for index, group in enumerate(self.groups):
            if len(group.q_axes) != 1 or group.q_axes != group.k_axes:
                return None
            found[group.q_axes[0]] = index
        return tuple(found)

    def axis_region(self, axis: int, interval: Interval, fail: bool = False) -> list[Interval]:
        """For a product mask (:meth:`axis_groups`): the keys on ``axis`` allowed (``fail``:
        refused) by some query coordinate in ``interval``, as disjoint intervals."""
        index = self.axis_groups()[axis]  # type: ignore[index]
        if index is None:
            return [] if fail else [self.key.full_box()[axis]]
        qbox = self._on_axis(self.query, axis, interval)
        return [box[0] for box in self._group_region(index, self.groups[index], qbox, fail)]

    def axis_truth(self, axis: int, queries: Interval, keys: Interval) -> int:
        """For a product mask: the truth of ``axis``'s conjuncts over the two intervals."""
        index = self.axis_groups()[axis]  # type: ignore[index]
        if index is None:
            return TRUE
        qbox, kbox = self._on_axis(self.query, axis, queries), self._on_axis(self.key, axis, keys)
        return self._group_truth(index, self.groups[index], qbox, kbox)

    @staticmethod
    def _on_axis(axes: Axes, axis: int, interval: Interval) -> Box:
        box = list(axes.full_box())
        box[axis] = interval
        return tuple(box)

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
