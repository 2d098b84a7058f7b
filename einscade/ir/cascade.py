"""The cascade: a short SSA list of extended Einsums over named ranks.

A cascade declares its inputs with one rank name per dimension, optional size definitions,
run-time parameters, grid ranks (``p = (px, py)``: a flat token rank seen as a row-major
product of axes) and ``let`` names for index expressions; then its statements in order.
An ``Iterate`` block is a loop over one rank whose tensors may be *iterative*: defined
at generation ``0`` before the loop and at generation ``r + 1`` in its body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from einscade.ir.errors import SourceLoc
from einscade.ir.expr import Expr

_LOC = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TensorDecl:
    """An input tensor and the rank naming each of its dimensions: ``Q[b, h, p, e]``."""

    name: str
    ranks: tuple[str, ...]
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class SizeDef:
    """``size M1 = (M + M0 - 1) // M0``: a size symbol defined from others or a constant."""

    name: str
    value: Expr
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Param:
    """``param scale: float = 1 / sqrt(E)``: a scalar bound at run time, maybe defaulted."""

    name: str
    kind: str  # "int" or "float"
    default: Expr | None = None
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Grid:
    """``grid p = (px, py)``: rank ``p`` is the row-major flattening of axes ``px, py``."""

    rank: str
    axes: tuple[str, ...]
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Let:
    """``let qi = px // 2``: a named integer expression over rank coordinates."""

    name: str
    value: Expr
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Reduce:
    """The reduce action of an Einsum: ``:: max(m)``."""

    op: str
    ranks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Einsum:
    """``T[i...] = value :: op(ranks) if predicate``.

    ``indices`` are plain rank names, except inside an ``Iterate`` where the iterated rank
    ``r`` of an iterative tensor is written as the generation ``0`` (init) or ``r + 1``.
    Points where ``predicate`` is false do not exist; a map point exists only where all of
    its operands exist; a reduction over a fiber with no points gives the reduction's
    identity (0 for sum, -inf for max, inf for min).
    """

    target: str
    indices: tuple[Expr, ...]
    value: Expr
    reduce: Reduce | None = None
    predicate: Expr | None = None
    loc: SourceLoc | None = _LOC


@dataclass(frozen=True, slots=True)
class Iterate:
    """``iterate r { ... }``: run the body for r = 0 .. R-1 in order (an iterative rank)."""

    rank: str
    body: tuple[Einsum, ...]
    loc: SourceLoc | None = _LOC


Statement = Einsum | Iterate


@dataclass(frozen=True, slots=True)
class Cascade:
    """A whole cascade. Equality ignores source locations."""

    name: str
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[str, ...]
    body: tuple[Statement, ...]
    sizes: tuple[SizeDef, ...] = ()
    params: tuple[Param, ...] = ()
    grids: tuple[Grid, ...] = ()
    lets: tuple[Let, ...] = ()
    loc: SourceLoc | None = _LOC

    def einsums(self) -> list[Einsum]:
        """All Einsums in program order, the bodies of ``iterate`` blocks flattened."""
        flat: list[Einsum] = []
        for stmt in self.body:
            flat.extend(stmt.body if isinstance(stmt, Iterate) else (stmt,))
        return flat

    def input(self, name: str) -> TensorDecl | None:
        return next((t for t in self.inputs if t.name == name), None)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def size_symbol(rank: str) -> str:
    """The size symbol of a rank: its name in upper case (``m0`` -> ``M0``)."""
    return rank.upper()
