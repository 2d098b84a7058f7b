"""Expression trees shared by map values, index expressions and mask predicates.

One small immutable tree type serves all three uses: ``Q[b, h, p, e] * scale`` (a value),
``m1*M0 + m0`` (an index) and ``m <= p and doc[b, m] == doc[b, p]`` (a predicate). The
verifier checks that each use only contains what it may. Source locations ride along for
error messages but never take part in equality, so ``parse(print(c)) == c`` holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from einscade.ir.errors import SourceLoc

_LOC = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Num:
    """A numeric literal: an ``int`` or a ``float`` (``inf`` and ``-inf`` included)."""

    value: int | float
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Name:
    """A bare name: a rank coordinate, a ``let``, a size symbol or a parameter."""

    id: str
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Access:
    """A tensor read ``T[i0, i1, ...]``; each index is an integer expression of ranks."""

    tensor: str
    indices: tuple[Expr, ...]
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Unary:
    """``-x`` or ``not x``."""

    op: str
    operand: Expr
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Binary:
    """Arithmetic, comparison or logical operator; see ``ops.BINARY_PRECEDENCE``."""

    op: str
    lhs: Expr
    rhs: Expr
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Call:
    """A map function ``fn(args)``; see ``ops.MAP_FUNCTIONS``."""

    fn: str
    args: tuple[Expr, ...]
    loc: SourceLoc | None = _LOC


Expr = Num | Name | Access | Unary | Binary | Call


def children(expr: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of ``expr``."""
    match expr:
        case Access(indices=indices):
            return indices
        case Unary(operand=operand):
            return (operand,)
        case Binary(lhs=lhs, rhs=rhs):
            return (lhs, rhs)
        case Call(args=args):
            return args
    return ()


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of ``expr``, parents before children."""
    yield expr
    for child in children(expr):
        yield from walk(child)


def names(expr: Expr) -> set[str]:
    """Bare names read anywhere in ``expr`` (indices of accesses included). An explicit
    stack rather than :func:`walk`'s generators: the layout analysis asks this of masks
    many times per call, and this is three times faster."""
    found: set[str] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is Name:
            found.add(node.id)  # type: ignore[union-attr]
        elif kind is Binary:
            stack.append(node.lhs)  # type: ignore[union-attr]
            stack.append(node.rhs)  # type: ignore[union-attr]
        elif kind is Unary:
            stack.append(node.operand)  # type: ignore[union-attr]
        elif kind is Call:
            stack.extend(node.args)  # type: ignore[union-attr]
        elif kind is Access:
            stack.extend(node.indices)  # type: ignore[union-attr]
    return found


def accesses(expr: Expr) -> list[Access]:
    """Tensor reads in ``expr``, outermost first."""
    return [node for node in walk(expr) if isinstance(node, Access)]


def map_expr(expr: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild ``expr`` bottom-up; ``fn`` returns a replacement for a node, or None to keep it."""
    match expr:
        case Access(tensor=t, indices=idx, loc=loc):
            rebuilt: Expr = Access(t, tuple(map_expr(i, fn) for i in idx), loc)
        case Unary(op=op, operand=x, loc=loc):
            rebuilt = Unary(op, map_expr(x, fn), loc)
        case Binary(op=op, lhs=a, rhs=b, loc=loc):
            rebuilt = Binary(op, map_expr(a, fn), map_expr(b, fn), loc)
        case Call(fn=name, args=args, loc=loc):
            rebuilt = Call(name, tuple(map_expr(a, fn) for a in args), loc)
        case _:
            rebuilt = expr
    replaced = fn(rebuilt)
    return rebuilt if replaced is None else replaced


def substitute(expr: Expr, bindings: dict[str, Expr]) -> Expr:
    """Replace bare names by expressions (used to expand ``let`` definitions)."""

    def swap(node: Expr) -> Expr | None:
        if isinstance(node, Name) and node.id in bindings:
            return bindings[node.id]
        return None

    return map_expr(expr, swap)


def conjoin(*preds: Expr | None) -> Expr | None:
    """``a and b and ...`` over the predicates that are not None."""
    present = [p for p in preds if p is not None]
    if not present:
        return None
    result = present[0]
    for pred in present[1:]:
        result = Binary("and", result, pred)
    return result
