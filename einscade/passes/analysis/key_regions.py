"""Key regions: the keys a predicate may allow for some query of a query box.

:func:`plan_region` compiles a predicate (or its negation, pushed down) into a function from
an environment (query coordinates bound to a box's intervals, key coordinates to the whole
key grid) to a list of boxes over the group's key axes that hold every key allowed for some
query of the box. Comparisons bounding one key coordinate through ``+ -``, ``*`` or ``//`` by
constants (``start_x <= mx``, ``mx // 2 < start_x + 3``, ``m - M <= p - P``) give ranges,
``T[m] == R`` the first and last key whose value lies in R's interval, ``T[m] != v`` the keys
outside the run of v when v's keys are contiguous; ``and`` intersects, ``or`` unites, ``not``
is pushed down; anything else keeps the whole axis unless FALSE on the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from einscade.ir.expr import Access, Binary, Expr, Name, Num, Unary, names, walk
from einscade.ir.ops import COMPARISONS
from einscade.passes.analysis.interval_core import (
    FALSE,
    Box,
    Env,
    Interval,
    RegionFn,
    Tables,
    TruthFn,
    compile_truth,
    intersect_box,
    merge_boxes,
    value_fn,
)

if TYPE_CHECKING:
    from einscade.passes.analysis.masks import Axes

_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


@dataclass(frozen=True, slots=True)
class RegionContext:
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


def plan_region(expr: Expr, negate: bool, ctx: RegionContext) -> RegionFn:
    """Region of keys allowed by ``expr`` (or its negation) for some query of the env's box."""
    match expr:
        case Unary(op="not", operand=x):
            return plan_region(x, not negate, ctx)
        case Binary(op="and" | "or" as op, lhs=a, rhs=b):
            fa, fb = plan_region(a, negate, ctx), plan_region(b, negate, ctx)
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


def _opaque(truth: TruthFn, ctx: RegionContext) -> RegionFn:
    full = [ctx.full]
    return lambda env: [] if truth(env) == FALSE else full


def _comparison_plan(op: str, a: Expr, b: Expr, ctx: RegionContext) -> RegionFn:
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


def _chain_plan(op: str, side: Expr, other: Expr, chain, ctx: RegionContext) -> RegionFn:  # type: ignore[no-untyped-def]
    var, steps = chain
    side_fn, other_fn = value_fn(side, ctx.tables), value_fn(other, ctx.tables)
    compiled = [(k, value_fn(a, ctx.tables) if k in _OFFSETS else a) for k, a in steps]

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


def _lookup_plan(side: Access, other: Expr, keys: set[str], ctx: RegionContext, differ=False):  # type: ignore[no-untyped-def]
    """``T[.., k, ..] == R``: keys whose lookup value can equal R lie between the first and the
    last position of the line holding a value in R's interval. ``differ``: ``T[..] != R``
    instead; where R is one value v held by one contiguous run of the line, the keys outside
    the run (a packed document's neighbours), else every key."""
    dims = [d for d, i in enumerate(side.indices) if isinstance(i, Name) and i.id in keys]
    if len(dims) != 1:
        return None
    dim, var = dims[0], side.indices[dims[0]].id  # type: ignore[union-attr]
    table, other_fn = ctx.tables[side.tensor], value_fn(other, ctx.tables)
    index_fns = [value_fn(i, ctx.tables) for i in side.indices]
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
