"""Facts derived from a cascade that the verifier, the executor and the analyses share.

``Scope`` knows every tensor's ranks, which tensors are iterative, which bare names are
ranks, lets, sizes or parameters, and each statement's iteration space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from einscade.ir.cascade import Cascade, Einsum, Iterate, size_symbol
from einscade.ir.expr import Binary, Expr, Name, Num, names, substitute


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A tensor's dimensions. ``generation`` is the position of the iterated rank's
    generation dimension (size R + 1) for iterative tensors, else None."""

    name: str
    ranks: tuple[str, ...]
    is_input: bool
    generation: int | None = None


def generation_index(index: Expr, rank: str) -> str | None:
    """Classify an lhs index inside ``iterate rank``: 'init' for ``0``, 'next' for ``rank + 1``."""
    if isinstance(index, Num) and index.value == 0 and isinstance(index.value, int):
        return "init"
    if (
        isinstance(index, Binary)
        and index.op == "+"
        and index.lhs == Name(rank)
        and index.rhs == Num(1)
    ):
        return "next"
    return None


def lhs_ranks(stmt: Einsum, iterated: str | None) -> tuple[str, ...]:
    """The rank of each lhs dimension; a generation index counts as the iterated rank."""
    ranks = []
    for index in stmt.indices:
        if isinstance(index, Name):
            ranks.append(index.id)
        elif iterated is not None and generation_index(index, iterated) is not None:
            ranks.append(iterated)
        else:
            ranks.append("?")
    return tuple(ranks)


class Scope:
    """Symbol table of one cascade (cheap to build; build once per analysis)."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        self.lets: dict[str, Expr] = {}
        for let in cascade.lets:
            self.lets[let.name] = substitute(let.value, self.lets)
        self.grids = {g.rank: g.axes for g in cascade.grids}
        self.axis_of = {axis: g.rank for g in cascade.grids for axis in g.axes}
        self.params = {p.name: p for p in cascade.params}
        self.iterated_by: dict[str, str] = {}
        for stmt in cascade.body:
            if isinstance(stmt, Iterate):
                for inner in stmt.body:
                    self.iterated_by[id(inner)] = stmt.rank

    @cached_property
    def ranks(self) -> set[str]:
        found: set[str] = set()
        for decl in self.cascade.inputs:
            found.update(decl.ranks)
        for grid in self.cascade.grids:
            found.add(grid.rank)
            found.update(grid.axes)
        for stmt in self.cascade.body:
            if isinstance(stmt, Iterate):
                found.add(stmt.rank)
        for stmt in self.cascade.einsums():
            found.update(i.id for i in stmt.indices if isinstance(i, Name))
            if stmt.reduce is not None:
                found.update(stmt.reduce.ranks)
        return found

    @cached_property
    def sizes(self) -> set[str]:
        return {size_symbol(r) for r in self.ranks} | {s.name for s in self.cascade.sizes}

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        table = {d.name: TensorInfo(d.name, d.ranks, True) for d in self.cascade.inputs}
        for stmt in self.cascade.einsums():
            if stmt.target in table:
                continue
            iterated = self.iterate_rank(stmt)
            ranks = lhs_ranks(stmt, iterated)
            gen = None
            if iterated is not None:
                gen = next(
                    (k for k, i in enumerate(stmt.indices) if generation_index(i, iterated)),
                    None,
                )
            table[stmt.target] = TensorInfo(stmt.target, ranks, False, gen)
        return table

    def taken_names(self) -> set[str]:
        """Every name in use (tensors, ranks, sizes, parameters, lets): what a pass that
        invents names must avoid."""
        params = {p.name for p in self.cascade.params}
        return set(self.tensors) | self.ranks | self.sizes | params | set(self.lets)

    def iterate_rank(self, stmt: Einsum) -> str | None:
        """The rank of the ``iterate`` block holding ``stmt``, or None at top level."""
        return self.iterated_by.get(id(stmt))

    def expand(self, expr: Expr) -> Expr:
        """``expr`` with every ``let`` name replaced by its definition."""
        return substitute(expr, self.lets) if self.lets else expr

    def ranks_in(self, expr: Expr) -> set[str]:
        """Ranks an expression reads, lets expanded; grid axes are reported as themselves."""
        return {n for n in names(self.expand(expr)) if n in self.ranks}

    def iteration_ranks(self, stmt: Einsum) -> tuple[str, ...]:
        """The statement's iteration space: lhs ranks, then other ranks in order of use.

        A grid axis whose grid rank is also iterated is derived from it and not listed.
        """
        ordered: list[str] = [r for r in lhs_ranks(stmt, self.iterate_rank(stmt)) if r != "?"]
        parts = [stmt.value] + ([stmt.predicate] if stmt.predicate is not None else [])
        for part in parts:
            for name in _names_in_order(self.expand(part)):
                if name in self.ranks and name not in ordered:
                    ordered.append(name)
        if stmt.reduce is not None:
            ordered.extend(r for r in stmt.reduce.ranks if r not in ordered)
        derived = {a for a in ordered if a in self.axis_of and self.axis_of[a] in ordered}
        return tuple(r for r in ordered if r not in derived)

    def flat_rank(self, rank: str) -> str:
        """The rank a grid axis belongs to, or the rank itself."""
        return self.axis_of.get(rank, rank)


def _names_in_order(expr: Expr) -> list[str]:
    from einscade.ir.expr import walk

    seen: list[str] = []
    for node in walk(expr):
        if isinstance(node, Name) and node.id not in seen:
            seen.append(node.id)
    return seen
