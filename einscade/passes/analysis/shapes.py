"""Shapes and work of a cascade for given sizes: what ``einscade show`` summarises.

Sizes missing from the caller's dictionary are derived from ``size`` definitions and grids;
each Einsum's work is its iteration-space points times the arithmetic operations per point
(plus one for the reduction), with symbolic forms kept in sympy for display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from einscade.codegen.bind import eval_scalar
from einscade.ir.cascade import Cascade, Einsum, size_symbol
from einscade.ir.errors import BindError
from einscade.ir.expr import Binary, Call, Unary, walk
from einscade.ir.scope import Scope


@dataclass(frozen=True, slots=True)
class StatementWork:
    """One Einsum's shape and work for concrete sizes."""

    target: str
    ranks: tuple[str, ...]
    shape: tuple[int, ...]
    points: int
    ops_per_point: int
    masked: bool

    @property
    def flops(self) -> int:
        return self.points * self.ops_per_point


def resolve_sizes(cascade: Cascade, given: dict[str, int]) -> dict[str, int]:
    """Complete ``given`` with the cascade's size definitions and grid products."""
    sizes = dict(given)
    for size in cascade.sizes:
        sizes[size.name] = int(eval_scalar(size.value, dict(sizes)))
    for grid in cascade.grids:
        axes = [size_symbol(a) for a in grid.axes]
        if all(a in sizes for a in axes):
            sizes[size_symbol(grid.rank)] = math.prod(sizes[a] for a in axes)
    return sizes


def symbolic_shape(ranks: tuple[str, ...]) -> sympy.Expr:
    return sympy.Mul(*(sympy.Symbol(size_symbol(r)) for r in ranks))


def _ops_per_point(stmt: Einsum) -> int:
    count = sum(1 for n in walk(stmt.value) if isinstance(n, Binary | Unary | Call))
    return max(count, 1) + (1 if stmt.reduce is not None else 0)


def statement_work(cascade: Cascade, sizes: dict[str, int]) -> list[StatementWork]:
    """Shape and dense work of every Einsum (iterate bodies counted once per step)."""
    scope = Scope(cascade)
    sizes = resolve_sizes(cascade, sizes)
    rows = []
    for stmt in cascade.einsums():
        info = scope.tensors[stmt.target]
        space = scope.iteration_ranks(stmt)
        missing = [size_symbol(r) for r in space + info.ranks if size_symbol(r) not in sizes]
        if missing:
            raise BindError(f"size {missing[0]} is unknown; pass --size {missing[0]}=N")
        shape = tuple(
            sizes[size_symbol(r)] + (1 if k == info.generation else 0)
            for k, r in enumerate(info.ranks)
        )
        points = math.prod(sizes[size_symbol(r)] for r in space)
        rows.append(
            StatementWork(
                stmt.target,
                info.ranks,
                shape,
                points,
                _ops_per_point(stmt),
                stmt.predicate is not None,
            )  # fmt: skip
        )
    return rows
