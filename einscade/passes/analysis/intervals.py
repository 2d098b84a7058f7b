"""Three-valued evaluation of mask predicates over boxes of rank coordinates.

A *box* gives each coordinate an integer interval ``[lo, hi]``. Integer expressions evaluate
to intervals (``+ - *``; ``//`` and ``%`` by positive divisors, ``%`` exact while the interval
stays in one period, else ``[0, c - 1]``; ``min max abs``; lookups ``doc[b, m]`` give the
min and max of the tensor over the index box). Comparisons give TRUE (every point of the box
satisfies it), FALSE (no point does) or UNKNOWN, and ``and``/``or``/``not`` follow Kleene
logic. Every rule is sound; correlated uses of one coordinate (``max(px - 3, 0) +
min(PX - px - 4, 0)``) may over-approximate, which can only turn an answer into UNKNOWN.

:class:`BoxEvaluator` makes the common window formulas exact:

1. The predicate's top-level conjuncts are grouped by the coordinates they share. Groups
   are independent over a box (a product), so the box is full iff every group is full and
   empty iff some group is empty: per-axis windows (NATTEN, HaloNet, MaxViT) factor exactly.
2. Within a group, each query axis used non-linearly (under ``//``, ``%``, ``min``, ``max``,
   ``abs``, a lookup index, a product of two non-constants, or a flat rank of a multi-axis
   grid) is split per coordinate value when it has at most ``split_limit`` points (at most
   ``split_limit ** 2`` pieces per group); the pieces' answers are joined. Per query row a
   window start is one number, so NA windows are exact per row.
3. Group answers are cached by the group's projection of the box: a layout evaluates each
   distinct (query interval, key interval) pair of an axis once, whatever the tile count.

:meth:`BoxEvaluator.key_region` returns boxes of key coordinates that hold every key allowed
for some query of a query box: comparisons that bound one key coordinate through ``+``,
``-``, ``*`` or ``//`` by constants (``start_x <= mx``, ``mx // 2 < start_x + 3``,
``m - M <= p - P``) give ranges, ``T[.., m, ..] == R`` gives the first and last key whose
lookup value lies in R's interval, ``and`` intersects, ``or`` unites; anything else keeps the
whole axis unless it is FALSE on the box. Lookup indices must be in range: out-of-range reads
are absent points, which :meth:`Mask.bind <einscade.passes.analysis.masks.Mask.bind>` states
as extra range conjuncts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary, children, names, walk
from einscade.ir.ops import COMPARISONS
from einscade.ir.printer import print_expr

FALSE, UNKNOWN, TRUE = 0, 1, 2  # Kleene: and = min, or = max, not = 2 - x


class Interval(NamedTuple):
    """The closed range ``[lo, hi]`` of values an expression takes on a box."""

    lo: int | float
    hi: int | float


Box = tuple[Interval, ...]
Env = dict[str, Interval]
ValueFn = Callable[[Env], Interval]
TruthFn = Callable[[Env], int]
RegionFn = Callable[[Env], list[Box]]


# -- interval arithmetic ----------------------------------------------------------------


def _add(a: Interval, b: Interval) -> Interval:
    return Interval(a.lo + b.lo, a.hi + b.hi)


def _sub(a: Interval, b: Interval) -> Interval:
    return Interval(a.lo - b.hi, a.hi - b.lo)


def _mul(a: Interval, b: Interval) -> Interval:
    corners = (a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi)
    return Interval(min(corners), max(corners))


def _floordiv(a: Interval, d: Interval) -> Interval:
    # Floor division by a positive divisor is monotone in each argument: corners bound it.
    corners = (a.lo // d.lo, a.lo // d.hi, a.hi // d.lo, a.hi // d.hi)
    return Interval(min(corners), max(corners))


def _mod(a: Interval, d: Interval) -> Interval:
    if d.lo == d.hi and a.lo // d.lo == a.hi // d.lo:
        return Interval(a.lo % d.lo, a.hi % d.lo)  # one period: % is a shift
    return Interval(0, d.hi - 1)


def _neg(a: Interval) -> Interval:
    return Interval(-a.hi, -a.lo)


def _abs(a: Interval) -> Interval:
    if a.lo >= 0:
        return a
    if a.hi <= 0:
        return _neg(a)
    return Interval(0, max(-a.lo, a.hi))


def _min(a: Interval, b: Interval) -> Interval:
    return Interval(min(a.lo, b.lo), min(a.hi, b.hi))


def _max(a: Interval, b: Interval) -> Interval:
    return Interval(max(a.lo, b.lo), max(a.hi, b.hi))


_ARITH = {"+": _add, "-": _sub, "*": _mul}
_CALLS = {"min": _min, "max": _max, "abs": _abs}


def _le(a: Interval, b: Interval) -> int:
    return TRUE if a.hi <= b.lo else FALSE if a.lo > b.hi else UNKNOWN


def _lt(a: Interval, b: Interval) -> int:
    return TRUE if a.hi < b.lo else FALSE if a.lo >= b.hi else UNKNOWN


def _eq(a: Interval, b: Interval) -> int:
    if a.lo == a.hi == b.lo == b.hi:
        return TRUE
    return FALSE if a.hi < b.lo or b.hi < a.lo else UNKNOWN


_COMPARE = {
    "<=": _le,
    "<": _lt,
    ">=": lambda a, b: _le(b, a),
    ">": lambda a, b: _lt(b, a),
    "==": _eq,
    "!=": lambda a, b: TRUE + FALSE - _eq(a, b),
}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


# -- lookups ----------------------------------------------------------------------------


def _sparse_tables(values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Level k holds the min / max of every run of 2**k values (range queries in O(1))."""
    mins, maxs = [values], [values]
    while 1 << len(mins) <= len(values):
        half = 1 << (len(mins) - 1)
        mins.append(torch.minimum(mins[-1][:-half], mins[-1][half:]))
        maxs.append(torch.maximum(maxs[-1][:-half], maxs[-1][half:]))
    return mins, maxs


def _range(tables: list[torch.Tensor], lo: int, hi: int, pick: Callable) -> int | float:
    level = (hi - lo + 1).bit_length() - 1
    return pick(tables[level][lo].item(), tables[level][hi - (1 << level) + 1].item())


class _Line:
    """One 1-D line of a lookup tensor with its range-min/max and value-position tables."""

    def __init__(self, values: torch.Tensor):
        self.mins, self.maxs = _sparse_tables(values.contiguous())
        self._by_value: tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None = None

    def minmax(self, lo: int, hi: int) -> Interval:
        return Interval(_range(self.mins, lo, hi, min), _range(self.maxs, lo, hi, max))

    def positions(self, vlo: float, vhi: float) -> tuple[int, int] | None:
        """First and last position holding a value in ``[vlo, vhi]``, or None."""
        if self._by_value is None:
            self._by_value = self._build_positions()
        uniq, first, last = self._by_value
        bounds = torch.tensor([float(vlo), float(vhi)], dtype=torch.float64)
        i = int(torch.searchsorted(uniq, bounds[:1]).item())
        j = int(torch.searchsorted(uniq, bounds[1:], right=True).item()) - 1
        if i > j:
            return None
        return int(_range(first, i, j, min)), int(_range(last, i, j, max))

    def _build_positions(self):  # type: ignore[no-untyped-def]
        values = self.mins[0]
        uniq, inverse = torch.unique(values, sorted=True, return_inverse=True)
        where = torch.arange(len(values))
        first = torch.full((len(uniq),), len(values)).scatter_reduce(0, inverse, where, "amin")
        last = torch.full((len(uniq),), -1).scatter_reduce(0, inverse, where, "amax")
        return uniq.to(torch.float64), _sparse_tables(first)[0], _sparse_tables(last)[1]


class LookupTable:
    """Range queries over a lookup tensor (``doc[b, m]``): min/max over an index box, and the
    first/last position of a line whose value lies in a range. Each 1-D line gets sparse
    tables on first use (O(n log n) once, O(1) per query)."""

    def __init__(self, name: str, values: torch.Tensor):
        self.name = name
        self.values = values.to(torch.int64) if values.dtype == torch.bool else values
        self.shape = tuple(values.shape)
        self._lines: dict[tuple[int, tuple[int, ...]], _Line] = {}

    def line(self, dim: int, fixed: list[int]) -> _Line:
        key = (dim, tuple(fixed[:dim] + fixed[dim + 1 :]))
        if key not in self._lines:
            index: list[int | slice] = list(fixed)
            index[dim] = slice(None)
            self._lines[key] = _Line(self.values[tuple(index)])
        return self._lines[key]

    def over(self, indices: list[Interval]) -> Interval:
        """The values' range over an index box (clipped to the tensor)."""
        lo = [max(int(i.lo), 0) for i in indices]
        hi = [min(int(i.hi), n - 1) for i, n in zip(indices, self.shape, strict=True)]
        if any(a > b for a, b in zip(lo, hi, strict=True)):
            return Interval(0, 0)  # absent everywhere: the range conjuncts decide
        varying = [d for d in range(len(lo)) if lo[d] != hi[d]]
        if not varying:
            value = self.values[tuple(lo)].item()
            return Interval(value, value)
        if len(varying) == 1:
            return self.line(varying[0], lo).minmax(lo[varying[0]], hi[varying[0]])
        block = self.values[tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))]
        return Interval(block.min().item(), block.max().item())


# -- compiling expressions to interval functions ----------------------------------------


def compile_value(expr: Expr, tables: dict[str, LookupTable]) -> ValueFn:
    """A function from an environment (coordinate name -> interval) to ``expr``'s interval."""
    match expr:
        case Num(value=v):
            constant = Interval(v, v)
            return lambda env: constant
        case Name(id=name):
            return lambda env: env[name]
        case Unary(op="-", operand=x):
            f = compile_value(x, tables)
            return lambda env: _neg(f(env))
        case Binary(op=op, lhs=a, rhs=b) if op in _ARITH:
            fa, fb, g = compile_value(a, tables), compile_value(b, tables), _ARITH[op]
            return lambda env: g(fa(env), fb(env))
        case Binary(op="//" | "%" as op, lhs=a, rhs=b):
            return _compile_division(expr, op, compile_value(a, tables), compile_value(b, tables))
        case Call(fn=fn, args=args) if fn in _CALLS:
            fs, g = [compile_value(x, tables) for x in args], _CALLS[fn]
            return lambda env: g(*[f(env) for f in fs])
        case Access(tensor=tensor, indices=indices) if tensor in tables:
            table, fs = tables[tensor], [compile_value(i, tables) for i in indices]
            return lambda env: table.over([f(env) for f in fs])
    raise ValueError(f"mask predicate: cannot bound {print_expr(expr)!r} by intervals")


def _compile_division(expr: Expr, op: str, fa: ValueFn, fb: ValueFn) -> ValueFn:
    g = _floordiv if op == "//" else _mod

    def divide(env: Env) -> Interval:
        divisor = fb(env)
        if divisor.lo <= 0:
            raise ValueError(
                f"mask predicate: {print_expr(expr)!r} needs a positive divisor, "
                f"got [{divisor.lo}, {divisor.hi}]"
            )
        return g(fa(env), divisor)

    return divide


def compile_truth(expr: Expr, tables: dict[str, LookupTable]) -> TruthFn:
    """A function from an environment to TRUE / FALSE / UNKNOWN for a predicate."""
    match expr:
        case Unary(op="not", operand=x):
            f = compile_truth(x, tables)
            return lambda env: TRUE + FALSE - f(env)
        case Binary(op="and", lhs=a, rhs=b):
            fa, fb = compile_truth(a, tables), compile_truth(b, tables)
            return lambda env: FALSE if (t := fa(env)) == FALSE else min(t, fb(env))
        case Binary(op="or", lhs=a, rhs=b):
            fa, fb = compile_truth(a, tables), compile_truth(b, tables)
            return lambda env: TRUE if (t := fa(env)) == TRUE else max(t, fb(env))
        case Binary(op=op, lhs=a, rhs=b) if op in COMPARISONS:
            fa, fb, cmp = compile_value(a, tables), compile_value(b, tables), _COMPARE[op]
            return lambda env: cmp(fa(env), fb(env))
    raise ValueError(f"mask predicate: {print_expr(expr)!r} is not a comparison or and/or/not")


# -- boxes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Axes:
    """One side's coordinates: the flat rank (``p``) and its grid axes (``px, py``, or ``p``
    itself without a grid), with the axes' extents."""

    flat: str
    names: tuple[str, ...]
    extents: tuple[int, ...]

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(math.prod(self.extents[i + 1 :]) for i in range(len(self.extents)))

    def full_box(self) -> Box:
        return tuple(Interval(0, n - 1) for n in self.extents)

    def indices_of(self, name: str) -> list[int]:
        """The axes a coordinate name reads: one axis, or all of them for the flat rank."""
        if name in self.names:
            return [self.names.index(name)]
        return list(range(len(self.names))) if name == self.flat else []

    def bind(self, box: Box, env: Env) -> None:
        """Put the box's axis intervals and the flat rank's hull into ``env``."""
        env.update(zip(self.names, box, strict=True))
        strides = self.strides
        lo = sum(i.lo * s for i, s in zip(box, strides, strict=True))
        env[self.flat] = Interval(lo, sum(i.hi * s for i, s in zip(box, strides, strict=True)))


def intersect_box(a: Box, b: Box) -> Box | None:
    box = tuple(Interval(max(x.lo, y.lo), min(x.hi, y.hi)) for x, y in zip(a, b, strict=True))
    return None if any(i.lo > i.hi for i in box) else box


def hull(a: Box, b: Box) -> Box:
    return tuple(Interval(min(x.lo, y.lo), max(x.hi, y.hi)) for x, y in zip(a, b, strict=True))


def merge_boxes(boxes: list[Box], limit: int = 8) -> list[Box]:
    """Merge boxes that overlap or touch into their hull (a superset); above ``limit``
    boxes, the hull of all (keeps unions of many per-row windows short)."""
    boxes = list(boxes)
    i = 0
    while i < len(boxes):
        j = next((j for j in range(i + 1, len(boxes)) if _touch(boxes[i], boxes[j])), None)
        if j is None:
            i += 1
            continue
        boxes[i] = hull(boxes[i], boxes.pop(j))
        i = 0
    if len(boxes) > limit:
        whole = boxes[0]
        for box in boxes[1:]:
            whole = hull(whole, box)
        return [whole]
    return boxes


def _touch(a: Box, b: Box) -> bool:
    return all(x.lo <= y.hi + 1 and y.lo <= x.hi + 1 for x, y in zip(a, b, strict=True))


def _conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "and":
        return _conjuncts(expr.lhs) + _conjuncts(expr.rhs)
    return [expr]


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


# -- key regions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RegionContext:
    """What a region plan needs: the key side, the group's key axes, the lookup tables."""

    key: Axes
    k_axes: tuple[int, ...]
    tables: dict[str, LookupTable]

    @property
    def full(self) -> Box:
        return tuple(Interval(0, self.key.extents[j] - 1) for j in self.k_axes)

    def key_vars(self) -> set[str]:
        return {self.key.flat, *self.key.names}

    def bound(self, var: str, lo: float, hi: float) -> list[Box]:
        """Sub-boxes (over the group's key axes) where coordinate ``var`` is in [lo, hi]."""
        lo, hi = math.ceil(lo), math.floor(hi)
        if var in self.key.names:
            axis = self.key.names.index(var)
        else:  # the flat key rank of a multi-axis grid bounds its outermost axis
            axis, lo, hi = 0, max(lo, 0) // self.key.strides[0], hi // self.key.strides[0]
        pos = self.k_axes.index(axis)
        full = self.full
        clipped = Interval(max(lo, full[pos].lo), min(hi, full[pos].hi))
        if clipped.lo > clipped.hi:
            return []
        return [full[:pos] + (clipped,) + full[pos + 1 :]]


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
    truth = compile_truth(Unary("not", expr) if negate else expr, ctx.tables)
    return _opaque(truth, ctx)


def _intersect_regions(first: list[Box], second: RegionFn, env: Env) -> list[Box]:
    if not first:
        return []
    boxes = [intersect_box(a, b) for a in first for b in second(env)]
    return merge_boxes([b for b in boxes if b is not None])


def _opaque(truth: TruthFn, ctx: _RegionContext) -> RegionFn:
    full = [ctx.full]
    return lambda env: [] if truth(env) == FALSE else full


def _comparison_plan(op: str, a: Expr, b: Expr, ctx: _RegionContext) -> RegionFn:
    keys = ctx.key_vars()
    uses = [n for n in walk(Binary(op, a, b)) if isinstance(n, Name) and n.id in keys]
    if len(uses) == 1 and op != "!=":
        side, other = (a, b) if names(a) & keys else (b, a)
        side_op = op if side is a else _FLIPPED[op]
        chain = _isolate(side, keys)
        if chain is not None:
            return _chain_plan(side_op, side, other, chain, ctx)
        if op == "==" and isinstance(side, Access):
            found = _lookup_plan(side, other, ctx)
            if found is not None:
                return found
    return _opaque(compile_truth(Binary(op, a, b), ctx.tables), ctx)


def _isolate(side: Expr, keys: set[str]) -> tuple[str, list[tuple[str, object]]] | None:
    """Peel ``side`` down to its key coordinate through +, -, * const, // const.

    Offsets must be integer-valued (no lookups, no float literals) so that strict bounds
    can be rounded to integers."""
    steps: list[tuple[str, object]] = []
    node = side
    while not (isinstance(node, Name) and node.id in keys):
        match node:
            case Binary(op="+" | "-" as op, lhs=x, rhs=y):
                keyed = bool(names(x) & keys)
                offset, node = (y, x) if keyed else (x, y)
                steps.append(("add" if op == "+" else "sub" if keyed else "rsub", offset))
                if any(isinstance(n, Access) or isinstance(n, Num) and isinstance(n.value, float)
                       for n in walk(offset)):  # fmt: skip
                    return None
            case Binary(op="*", lhs=x, rhs=Num(value=int() as d)) if d != 0:
                steps.append(("mul", d))
                node = x
            case Binary(op="*", lhs=Num(value=int() as d), rhs=x) if d != 0:
                steps.append(("mul", d))
                node = x
            case Binary(op="//", lhs=x, rhs=Num(value=int() as d)) if d > 0:
                steps.append(("div", d))
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
        lo, hi = _initial_bounds(op, side_fn(env), other_fn(env))
        for kind, arg in compiled:
            if lo > hi:
                return []
            lo, hi = _peel(kind, arg, env, lo, hi)
        return ctx.bound(var, lo, hi) if lo <= hi else []

    return region


_OFFSETS = ("add", "sub", "rsub")


def _initial_bounds(op: str, side: Interval, u: Interval) -> tuple[float, float]:
    """Bounds on the (integer) key side from ``side op u``; ``side`` is its range over the
    whole key axis, which closes the open end."""
    if op == "<=":
        return side.lo, math.floor(u.hi)
    if op == "<":
        return side.lo, math.ceil(u.hi) - 1
    if op == ">=":
        return math.ceil(u.lo), side.hi
    if op == ">":
        return math.floor(u.lo) + 1, side.hi
    return max(side.lo, math.ceil(u.lo)), min(side.hi, math.floor(u.hi))


def _peel(kind: str, arg, env: Env, lo: float, hi: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """From ``f(x) in [lo, hi]`` to a range of ``x`` (a superset over the env's box)."""
    if kind in _OFFSETS:
        c = arg(env)
        if kind == "add":  # x + c
            return lo - c.hi, hi - c.lo
        if kind == "sub":  # x - c
            return lo + c.lo, hi + c.hi
        return c.lo - hi, c.hi - lo  # c - x
    if kind == "neg":
        return -hi, -lo
    if kind == "div":  # x // d in [lo, hi] iff d*lo <= x <= d*hi + d - 1
        return lo * arg, hi * arg + arg - 1
    if arg > 0:  # x * d
        return -((-lo) // arg), hi // arg
    return -((-hi) // arg), lo // arg


def _lookup_plan(side: Access, other: Expr, ctx: _RegionContext) -> RegionFn | None:
    """``T[.., k, ..] == R``: keys whose lookup value can equal R lie between the first and the
    last position of the line holding a value in R's interval."""
    keys = ctx.key_vars()
    dims = [d for d, i in enumerate(side.indices) if isinstance(i, Name) and i.id in keys]
    if len(dims) != 1 or side.tensor not in ctx.tables:
        return None
    dim, var = dims[0], side.indices[dims[0]].id  # type: ignore[union-attr]
    table, other_fn = ctx.tables[side.tensor], compile_value(other, ctx.tables)
    index_fns = [compile_value(i, ctx.tables) for i in side.indices]
    full = [ctx.full]

    def region(env: Env) -> list[Box]:
        fixed = [f(env) for f in index_fns]
        if any(i.lo != i.hi for d, i in enumerate(fixed) if d != dim):
            return full
        shape = table.shape
        point = [int(i.lo) if d != dim else 0 for d, i in enumerate(fixed)]
        if any(not 0 <= v < n for v, n in zip(point, shape, strict=True)):
            return full  # absent reads: the range conjuncts decide
        u = other_fn(env)
        found = table.line(dim, point).positions(u.lo, u.hi)
        return [] if found is None else ctx.bound(var, *found)

    return region


# -- the evaluator ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    """Conjuncts sharing coordinates: their query/key axes, the query axes to split, and
    the compiled truth and region functions."""

    q_axes: tuple[int, ...]
    k_axes: tuple[int, ...]
    split: tuple[int, ...]
    truth: TruthFn
    region: RegionFn


class BoxEvaluator:
    """Three-valued truth of a predicate over (query box, key box) pairs and the key region
    of a query box (see the module docstring for the grouping, splitting and caching)."""

    def __init__(
        self,
        predicate: Expr | None,
        query: Axes,
        key: Axes,
        tables: dict[str, LookupTable],
        split_limit: int = 16,
    ):
        self.query, self.key, self.tables, self.split_limit = query, key, tables, split_limit
        conjuncts = [] if predicate is None else _conjuncts(predicate)
        known = {query.flat, key.flat, *query.names, *key.names}
        for conjunct in conjuncts:
            for name in sorted(names(conjunct) - known):
                raise ValueError(
                    f"mask predicate {print_expr(conjunct)!r} reads {name!r}, which is neither "
                    "a query nor a key coordinate (bind sizes, params and other ranks first)"
                )
        self.groups = [self._group(c) for c in self._connected(conjuncts)]
        self._truths: dict[tuple, int] = {}
        self._regions: dict[tuple, list[Box]] = {}

    def _labels(self, expr: Expr) -> set[tuple[str, int]]:
        used = names(expr)
        return {("q", i) for n in used for i in self.query.indices_of(n)} | {
            ("k", j) for n in used for j in self.key.indices_of(n)
        }

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
        expr = exprs[0]
        for more in exprs[1:]:
            expr = Binary("and", expr, more)
        labels = self._labels(expr)
        q_axes = tuple(sorted(i for side, i in labels if side == "q"))
        k_axes = tuple(sorted(j for side, j in labels if side == "k"))
        split = {i for n in _nonlinear_names(expr) for i in self.query.indices_of(n)}
        if self.query.flat in names(expr) and len(self.query.names) > 1:
            split |= set(range(len(self.query.names) - 1))  # makes the flat range contiguous
        ctx = _RegionContext(self.key, k_axes, self.tables)
        truth = compile_truth(expr, self.tables)
        return _Group(q_axes, k_axes, tuple(sorted(split)), truth, _plan(expr, False, ctx))

    def _pieces(self, group: _Group, qbox: Box) -> Iterator[Box]:
        axes, count = [], 1
        for i in group.split:
            n = qbox[i].hi - qbox[i].lo + 1
            if 1 < n <= self.split_limit and count * n <= self.split_limit**2:
                axes.append(i)
                count *= n
        if not axes:
            yield qbox
            return
        for values in itertools.product(*(range(qbox[i].lo, qbox[i].hi + 1) for i in axes)):
            box = list(qbox)
            for i, v in zip(axes, values, strict=True):
                box[i] = Interval(v, v)
            yield tuple(box)

    def _group_truth(self, index: int, group: _Group, qbox: Box, kbox: Box) -> int:
        key = (index, tuple(qbox[i] for i in group.q_axes), tuple(kbox[j] for j in group.k_axes))
        found = self._truths.get(key)
        if found is None:
            found = self._truths[key] = self._split_truth(group, qbox, kbox)
        return found

    def _split_truth(self, group: _Group, qbox: Box, kbox: Box) -> int:
        env: Env = {}
        self.key.bind(kbox, env)
        result = None
        for piece in self._pieces(group, qbox):
            self.query.bind(piece, env)
            t = group.truth(env)
            if t == UNKNOWN or (result is not None and t != result):
                return UNKNOWN
            result = t
        return TRUE if result is None else result

    def truth(self, qboxes: list[Box], kboxes: list[Box]) -> int:
        """TRUE if every pair of the boxes' points is allowed, FALSE if none is."""
        result = None
        for qbox in qboxes:
            for kbox in kboxes:
                t = TRUE
                for index, group in enumerate(self.groups):
                    t = min(t, self._group_truth(index, group, qbox, kbox))
                    if t == FALSE:
                        break
                if t == UNKNOWN or (result is not None and t != result):
                    return UNKNOWN
                result = t
        return FALSE if result is None else result

    def _group_region(self, index: int, group: _Group, qbox: Box) -> list[Box]:
        key = (index, tuple(qbox[i] for i in group.q_axes))
        found = self._regions.get(key)
        if found is None:
            env: Env = {}
            self.key.bind(self.key.full_box(), env)
            boxes: list[Box] = []
            for piece in self._pieces(group, qbox):
                self.query.bind(piece, env)
                boxes = merge_boxes(boxes + group.region(env))
            found = self._regions[key] = boxes
        return found

    def key_region(self, qboxes: list[Box]) -> list[Box]:
        """Boxes of key coordinates holding every key allowed for some query of the boxes."""
        found: list[Box] = []
        for qbox in qboxes:
            boxes = [self.key.full_box()]
            for index, group in enumerate(self.groups):
                parts = self._group_region(index, group, qbox)
                boxes = [b for b in (_assign(box, group.k_axes, p) for box in boxes for p in parts)
                         if b is not None]  # fmt: skip
                if not boxes:
                    break
            found += boxes
        return merge_boxes(found)


def _assign(box: Box, axes: tuple[int, ...], part: Box) -> Box | None:
    """``box`` with the given axes intersected with ``part``; None if empty."""
    out = list(box)
    for j, interval in zip(axes, part, strict=True):
        lo, hi = max(out[j].lo, interval.lo), min(out[j].hi, interval.hi)
        if lo > hi:
            return None
        out[j] = Interval(lo, hi)
    return tuple(out)
