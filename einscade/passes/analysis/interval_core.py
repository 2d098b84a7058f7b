"""Interval arithmetic over boxes of rank coordinates: the rules every mask analysis uses.

A *box* gives each coordinate an integer interval. Integer expressions evaluate to intervals
(``+ - *``; ``//`` and ``%`` by positive divisors, ``%`` exact while the interval stays in
one period, else ``[0, c - 1]``; ``min max abs``; a lookup ``doc[b, m]`` gives the min and
max of the tensor over the index box, see ``masks.LookupTable``). Comparisons give TRUE
(every point of the box satisfies it), FALSE (none does) or UNKNOWN; ``and or not`` follow
Kleene logic; ``==`` is TRUE only between equal constants. Every rule is sound; correlated
uses of one coordinate (``max(px - 3, 0) + min(PX - px - 4, 0)``) may over-approximate.

Integer expressions compile to generated straight-line Python (:func:`compile_value`),
cached per expression. Boxes themselves are tuples of :class:`Interval` with a few set
operations (:func:`intersect_box`, :func:`hull`, :func:`merge_boxes`, :func:`meets`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary, walk
from einscade.ir.ops import COMPARISONS
from einscade.ir.printer import print_expr

if TYPE_CHECKING:
    from einscade.passes.analysis.masks import LookupTable

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


def compile_value(expr: Expr, tables: Tables) -> ValueFn:
    """A function from an environment (coordinate name -> interval) to ``expr``'s interval."""
    fast = value_fn(expr, tables)
    return lambda env: Interval(*fast(env))


def value_fn(expr: Expr, tables: Tables) -> ValueFn:
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
    The rules are the ones of the module doc."""

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
            fa, fb, cmp = value_fn(a, tables), value_fn(b, tables), _COMPARE[op]
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


def merge_runs(boxes: list[Box]) -> list[Box]:
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
