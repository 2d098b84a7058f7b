"""defer-div: move factors that do not vary along a sum's reduced ranks out of the sum.

If a map after a reduction splits as F(x, y) = G(x) * H(y) and H does not vary along the
reduced ranks, then sum_r F = H * sum_r G: the division by a softmax denominator can wait
until after the reduction with V, and the pass that normalises every score disappears.
The rewrite inlines single-use map statements into the sum, splits the product into
numerator and denominator factors, and keeps inside the sum only the factors that read a
reduced rank. Constant factors stay where they are (moving them saves nothing).

Before (3 passes over m)::

    SD[p] = SN[m, p] :: sum(m)
    A[m, p] = SN[m, p] / SD[p]
    AV[f, p] = A[m, p] * V[f, m] :: sum(m)

After (2 passes)::

    SD[p] = SN[m, p] :: sum(m)
    SNV[f, p] = SN[m, p] * V[f, m] :: sum(m)
    AV[f, p] = SNV[f, p] / SD[p]

Where the sum's fiber may be empty (a mask upstream, or an affine read that can fall out of
range), a fully masked row used to sum to 0; its deferred form would divide 0 by 0. The
moved denominators are then guarded, ``SNV[f, p] / where(SD[p] == 0, 1.0, SD[p])``: equal
wherever the original division was finite, and 0 on empty rows.

Only ``sum`` reductions qualify (a factor leaves a max or min only if it is positive, which
the IR cannot promise); statements inside ``iterate`` blocks are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from einscade.ir.cascade import Cascade, Einsum, Statement
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, accesses
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope
from einscade.passes.analysis.emptiness import fiber_may_be_empty
from einscade.passes.analysis.uses import read_counts
from einscade.passes.base import Note, Pass, PassResult, register
from einscade.passes.naming import fresh_name


@dataclass(frozen=True, slots=True)
class _Factors:
    """A product ``prod(numerator) / prod(denominator)``."""

    numerator: tuple[Expr, ...]
    denominator: tuple[Expr, ...]


def split_product(expr: Expr) -> _Factors:
    """Flatten nested ``*`` and ``/`` into factor lists (other nodes are single factors)."""
    if isinstance(expr, Binary) and expr.op == "*":
        a, b = split_product(expr.lhs), split_product(expr.rhs)
        return _Factors(a.numerator + b.numerator, a.denominator + b.denominator)
    if isinstance(expr, Binary) and expr.op == "/":
        a, b = split_product(expr.lhs), split_product(expr.rhs)
        return _Factors(a.numerator + b.denominator, a.denominator + b.numerator)
    return _Factors((expr,), ())


def join_product(factors: _Factors) -> Expr:
    result: Expr | None = None
    for factor in factors.numerator:
        result = factor if result is None else Binary("*", result, factor)
    if result is None:
        result = Num(1.0)
    for factor in factors.denominator:
        result = Binary("/", result, factor)
    return result


def _nonzero(denominator: Expr) -> Expr:
    """``where(d == 0, 1.0, d)``: an empty sum divides by 1, so its row stays 0."""
    return Call("where", (Binary("==", denominator, Num(0)), Num(1.0), denominator))


def _inlinable(scope: Scope, counts, definitions: dict[str, Einsum], node: Access) -> Einsum | None:  # type: ignore[no-untyped-def]
    """The single-use, non-reducing top-level definition this access may be replaced by."""
    definition = definitions.get(node.tensor)
    if definition is None or definition.reduce is not None or counts[node.tensor] != 1:
        return None
    if definition.predicate is not None or node.indices != definition.indices:
        return None
    return definition


class _Deferral:
    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        self.scope = Scope(cascade)
        self.counts = read_counts(cascade)
        self.definitions = {s.target: s for s in cascade.body if isinstance(s, Einsum)}
        self.taken = self.scope.taken_names()
        self.inlined: set[str] = set()
        self.notes: list[Note] = []

    def inline(self, expr: Expr, inlined: list[str]) -> Expr:
        """Replace single-use map tensors inside a product by their definitions."""
        factors = split_product(expr)

        def expand(factor: Expr) -> tuple[Expr, ...] | None:
            if not isinstance(factor, Access):
                return None
            definition = _inlinable(self.scope, self.counts, self.definitions, factor)
            if definition is None:
                return None
            inlined.append(definition.target)
            inner = split_product(self.inline(definition.value, inlined))
            return inner.numerator, inner.denominator  # type: ignore[return-value]

        numerator: list[Expr] = []
        denominator: list[Expr] = []
        for side, own, other in ((factors.numerator, numerator, denominator),
                                 (factors.denominator, denominator, numerator)):  # fmt: skip
            for factor in side:
                expanded = expand(factor)
                if expanded is None:
                    own.append(factor)
                else:
                    own.extend(expanded[0])
                    other.extend(expanded[1])
        return join_product(_Factors(tuple(numerator), tuple(denominator)))

    def varies(self, factor: Expr, reduced: tuple[str, ...]) -> bool:
        flat = {self.scope.flat_rank(r) for r in self.scope.ranks_in(factor)}
        return bool(flat & set(reduced))

    def partition(self, factors: _Factors, reduced: tuple[str, ...]) -> tuple[_Factors, _Factors]:
        """(factors that stay in the sum, tensor factors that do not vary along it)."""

        def moves(factor: Expr) -> bool:
            return bool(accesses(factor)) and not self.varies(factor, reduced)

        inside = _Factors(
            tuple(f for f in factors.numerator if not moves(f)),
            tuple(f for f in factors.denominator if not moves(f)),
        )
        outside = _Factors(
            tuple(f for f in factors.numerator if moves(f)),
            tuple(f for f in factors.denominator if moves(f)),
        )
        return inside, outside

    def fresh(self, factors: tuple[Expr, ...]) -> str:
        stem = "".join(a.tensor for f in factors for a in accesses(f)) or "T"
        return fresh_name(stem, self.taken)

    def rewrite(self, stmt: Einsum) -> list[Einsum] | None:
        if stmt.reduce is None or stmt.reduce.op != "sum":
            return None
        inlined: list[str] = []
        factors = split_product(self.inline(stmt.value, inlined))
        inside, outside = self.partition(factors, stmt.reduce.ranks)
        if not outside.numerator and not outside.denominator:
            reason = f"{stmt.target}: no factor outside sum({', '.join(stmt.reduce.ranks)})"
            self.notes.append(Note("decline", reason))
            return None
        if outside.denominator and fiber_may_be_empty(self.cascade, stmt, self.scope):
            outside = _Factors(outside.numerator, tuple(map(_nonzero, outside.denominator)))
        partial = self.fresh(inside.numerator + inside.denominator)
        lhs = tuple(Name(i.id) for i in stmt.indices if isinstance(i, Name))
        reduced_stmt = replace(stmt, target=partial, value=join_product(inside))
        rest = _Factors((Access(partial, lhs),) + outside.numerator, outside.denominator)
        final = Einsum(stmt.target, stmt.indices, join_product(rest), None, None, stmt.loc)
        self.inlined.update(inlined)
        moved = ", ".join(print_expr(f) for f in outside.numerator + outside.denominator)
        sums = f"sum({', '.join(stmt.reduce.ranks)})"
        message = f"{stmt.target}: moved {moved} out of {sums}: {print_expr(final.value)}"
        self.notes.append(Note("rewrite", message))
        return [reduced_stmt, final]

    def run(self) -> Cascade:
        body: list[Statement] = []
        for stmt in self.cascade.body:
            rewritten = self.rewrite(stmt) if isinstance(stmt, Einsum) else None
            body.extend(rewritten if rewritten is not None else [stmt])
        kept = [s for s in body if not (isinstance(s, Einsum) and s.target in self.inlined)]
        return replace(self.cascade, body=tuple(kept))


@register
@dataclass(frozen=True)
class DeferDiv(Pass):
    """Move sum-invariant factors (a softmax's 1 / SD) past the sum they multiply."""

    name = "defer-div"

    def run(self, cascade: Cascade) -> PassResult:
        deferral = _Deferral(cascade)
        result = deferral.run()
        return PassResult(result, tuple(deferral.notes))
