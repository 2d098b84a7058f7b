"""Rewriting expressions when one rank becomes two: an outer tile index and an inner offset.

``RankSplit`` replaces every use of rank ``m`` by the expression that recovers it (``m1 * M0
+ m0`` for 1-D tiles, a box formula for a tile of a grid), every use of a grid axis of ``m``
by that axis's value, and the ``m`` dimension of each split tensor by the two dimensions
``(m1, m0)``. online-softmax splits the key rank this way and tile splits the query rank.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from einscade.ir.cascade import Let, size_symbol
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Unary, names

Hook = Callable[[Access, "RankSplit"], Expr | None]


class SplitError(Exception):
    """The split cannot express a use of the rank (the message says which)."""


def flat_coordinate(outer: str, inner: str) -> Expr:
    """``outer * INNER + inner``: the rank's value for 1-D tiles of size ``INNER``."""
    return Binary("+", Binary("*", Name(outer), Name(size_symbol(inner))), Name(inner))


def product(factors: list[Expr]) -> Expr:
    result = factors[0]
    for factor in factors[1:]:
        result = Binary("*", result, factor)
    return result


def row_major_axes(axes: tuple[str, ...], flat: Expr) -> dict[str, Expr]:
    """Each grid axis as a function of the flat row-major coordinate ``flat``."""
    values: dict[str, Expr] = {}
    for k, axis in enumerate(axes):
        later = [Name(size_symbol(a)) for a in axes[k + 1 :]]
        value = Binary("//", flat, product(later)) if later else flat
        values[axis] = value if k == 0 else Binary("%", value, Name(size_symbol(axis)))
    return values


@dataclass(frozen=True)
class RankSplit:
    rank: str
    outer: str
    inner: str
    coordinate: Expr
    axis_values: Mapping[str, Expr]
    split: frozenset[str]

    def expr(self, expr: Expr, hook: Hook | None = None) -> Expr:
        """``expr`` in split coordinates; ``hook`` may take over particular accesses."""
        match expr:
            case Name(id=name) if name == self.rank:
                return self.coordinate
            case Name(id=name) if name in self.axis_values:
                return self.axis_values[name]
            case Access() if hook is not None and (taken := hook(expr, self)) is not None:
                return taken
            case Access(tensor=t, indices=idx) if t in self.split:
                return Access(t, self.indices(t, idx, hook))
            case Access(tensor=t, indices=idx):
                return Access(t, tuple(self.expr(i, hook) for i in idx))
            case Unary(op=op, operand=x):
                return Unary(op, self.expr(x, hook))
            case Binary(op=op, lhs=a, rhs=b):
                return Binary(op, self.expr(a, hook), self.expr(b, hook))
            case Call(fn=fn, args=args):
                return Call(fn, tuple(self.expr(a, hook) for a in args))
        return expr

    def indices(self, tensor: str, indices: tuple[Expr, ...], hook: Hook | None = None):  # type: ignore[no-untyped-def]
        """Indices of a split tensor: the rank's own index becomes (outer, inner)."""
        result: list[Expr] = []
        for index in indices:
            if index == Name(self.rank):
                result += [Name(self.outer), Name(self.inner)]
            elif self.rank in names(index) or names(index) & set(self.axis_values):
                raise SplitError(f"{tensor} is read at {index}, not at {self.rank!r}")
            else:
                result.append(self.expr(index, hook))
        return tuple(result)

    def with_axis_lets(self) -> tuple[RankSplit, tuple[Let, ...]]:
        """Keep grid-axis names readable: define each axis as a ``let`` of the new ranks
        (``let mx = (m1 * M0 + m0) // MY``) instead of substituting its formula."""
        lets = tuple(Let(axis, value) for axis, value in self.axis_values.items())
        return replace(self, axis_values={}), lets

    def reads_inner(self, expr: Expr) -> bool:
        """Whether some read in ``expr`` is indexed by the inner rank (so tails fall out)."""
        from einscade.ir.expr import accesses

        return any(self.inner in names(i) for a in accesses(expr) for i in a.indices)
