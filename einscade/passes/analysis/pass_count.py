"""How many passes over a rank a cascade needs (FuseMax's lower bound).

A *pass* is one traversal of a fiber of rank ``m``. Each tensor gets an *availability*: 0 if
it does not depend on ``m``; ``k`` while it streams during pass ``k`` (it still carries ``m``);
``k + 1/2`` once it is complete after pass ``k`` (``m`` reduced away). An Einsum *walks* ``m``
when its iteration space holds a rank of ``m``'s family (or it sits in ``iterate r`` with ``r``
in the family); it runs in pass ``max(1, ceil(max availability of its inputs))``. The cascade
needs as many passes as its largest pass number. Plain softmax attention:

    statement                                   pass  availability of the result
    QK[m, p] = Q[e, p] * K[e, m] :: sum(e)      1     1     streams (keeps m)
    GM[p]    = QK[m, p] :: max(m)               1     1.5   complete after pass 1
    SN[m, p] = exp(QK[m, p] - GM[p])            2     2     needs GM: a second walk of m
    SD[p]    = SN[m, p] :: sum(m)               2     2.5
    A[m, p]  = SN[m, p] / SD[p]                 3     3     needs SD: a third walk
    AV[f, p] = A[m, p] * V[f, m] :: sum(m)      3     3.5

Three passes; QK (made in pass 1, read in pass 2) and SN (made in 2, read in 3) are *live
across* passes: each must be buffered whole (memory growing with the sequence) or recomputed
or re-read once per extra pass.

The *family* of ``m`` is ``m``, its grid axes, and every rank written in an index expression
of a data access to a dimension declared with a family rank (``K[e, m1 * M0 + m0]`` adds
``m1`` and ``m0``), grown to a fixed point. Comparisons (masks, ``where`` conditions) only
test coordinates, so lookups such as ``doc[b, m] == doc[b, p]`` never join ``p`` to the family.
A reduction over a tile-local rank (``m0``) that keeps another family rank (``m1``) still
streams, and every statement in an ``iterate`` block over a family rank streams: the loop is
one traversal, so the whole block shares one pass (the largest of its statements). An iterative
tensor read after its loop (``RM[M1, p]``) is complete: loop pass + 1/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einscade.ir import ops
from einscade.ir.cascade import Cascade, Einsum, Iterate
from einscade.ir.expr import Access, Binary, Expr, accesses, children
from einscade.ir.scope import Scope, lhs_ranks


@dataclass(frozen=True, slots=True)
class LiveTensor:
    """A tensor carrying the rank that a later pass reads again (buffer it or re-read it).

    ``read_in`` lists only the passes after ``produced_in`` that read it, in increasing order.
    """

    name: str
    produced_in: int
    read_in: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PassReport:
    """The pass structure of a cascade over one rank (see the module docstring for the rule).

    ``statement_pass``: the pass of each Einsum target that walks the rank, None otherwise
    (an iterative tensor is defined twice: the larger of the two). ``availability``: every tensor,
    inputs (0) included; for an iterative tensor of a loop over the rank, the availability
    of its final generation after the loop. ``family``: the ranks that count as the rank.
    """

    passes: int
    statement_pass: dict[str, int | None]
    availability: dict[str, float]
    live_across: tuple[LiveTensor, ...]
    rank: str = "m"
    family: tuple[str, ...] = ()

    def __str__(self) -> str:
        family = ", ".join(self.family) or self.rank
        lines = [f"passes over {self.rank} (family {family}): {self.passes}"]
        width = max([len("tensor")] + [len(name) for name in self.availability])
        lines.append(f"  {'tensor':<{width}}  pass  available")
        for name, avail in self.availability.items():
            run = self.statement_pass.get(name)
            shown = "-" if run is None else str(run)
            lines.append(f"  {name:<{width}}  {shown:<4}  {avail:g}")
        if self.live_across:
            lines.append("live across passes:")
        for live in self.live_across:
            later = ", ".join(str(k) for k in live.read_in)
            made = live.produced_in
            lines.append(f"  {live.name}: produced in pass {made}, read in pass {later}")
        return "\n".join(lines)


def rank_family(cascade: Cascade, rank: str = "m") -> frozenset[str]:
    """The ranks that traverse ``rank``: itself, its grid axes, and (to a fixed point) every
    rank in an index expression of a data access to a dimension declared with a family rank."""
    scope = Scope(cascade)
    family = {rank}
    while True:
        grown = set(family)
        for member in family:
            grown.update(scope.grids.get(member, ()))
        for stmt in cascade.einsums():
            for access in _data_accesses(stmt.value):
                declared = scope.tensors[access.tensor].ranks
                for dim_rank, index in zip(declared, access.indices, strict=True):
                    if dim_rank in family:
                        grown |= scope.ranks_in(index)
        if grown == family:
            return frozenset(family)
        family = grown


def pass_count(cascade: Cascade, rank: str = "m") -> PassReport:
    """Count the passes over ``rank`` that ``cascade`` needs, FuseMax style.

    Returns the pass of every Einsum that walks the rank, each tensor's availability and the
    tensors live across passes. A cascade that never walks the rank needs 0 passes.
    """
    counter = _Counter(cascade, Scope(cascade), rank_family(cascade, rank))
    counter.run()
    passes = max((p for p in counter.pass_by_stmt.values() if p is not None), default=0)
    return PassReport(
        passes=passes,
        statement_pass=counter.statement_pass(),
        availability=counter.reported_availability(),
        live_across=counter.live_across(),
        rank=rank,
        family=tuple(sorted(counter.family)),
    )


class _Counter:
    """One walk over the cascade in program order, assigning passes and availabilities."""

    def __init__(self, cascade: Cascade, scope: Scope, family: frozenset[str]):
        self.cascade = cascade
        self.scope = scope
        self.family = family
        self.availability: dict[str, float] = {d.name: 0.0 for d in cascade.inputs}
        self.pass_by_stmt: dict[int, int | None] = {}
        self.block_of: dict[int, int] = {}
        # Iterative tensors of loops over a family rank: target -> index of the loop.
        self.loop_of: dict[str, int] = {}

    def run(self) -> None:
        for block, stmt in enumerate(self.cascade.body):
            body = stmt.body if isinstance(stmt, Iterate) else (stmt,)
            for einsum in body:
                self.block_of[id(einsum)] = block
            if isinstance(stmt, Iterate) and stmt.rank in self.family:
                self.visit_family_loop(stmt, block)
            else:
                for einsum in body:
                    self.visit(einsum)

    def visit(self, stmt: Einsum) -> None:
        inputs = self.input_availability(stmt)
        if not self.walks(stmt):
            self.define(stmt, None, inputs)
            return
        run = max(1, math.ceil(inputs))
        keeps = any(r in self.family for r in lhs_ranks(stmt, self.scope.iterate_rank(stmt)))
        self.define(stmt, run, run if keeps else run + 0.5)

    def visit_family_loop(self, block: Iterate, index: int) -> None:
        """A loop over a family rank is one traversal: every statement streams in one pass."""
        passes = []
        for stmt in block.body:
            run = max(1, math.ceil(self.input_availability(stmt)))
            self.define(stmt, run, None)
            passes.append(run)
        loop_pass = max(passes)
        for stmt in block.body:
            self.pass_by_stmt[id(stmt)] = loop_pass
            self.availability[stmt.target] = loop_pass
            if self.scope.tensors[stmt.target].generation is not None:
                self.loop_of[stmt.target] = index

    def define(self, stmt: Einsum, run: int | None, avail: float | None) -> None:
        """Record a statement; an iterative tensor's second definition keeps the later time."""
        self.pass_by_stmt[id(stmt)] = run
        value = float(run if avail is None else avail)
        self.availability[stmt.target] = max(value, self.availability.get(stmt.target, 0.0))

    def walks(self, stmt: Einsum) -> bool:
        if self.scope.iterate_rank(stmt) in self.family:
            return True
        return any(r in self.family for r in self.scope.iteration_ranks(stmt))

    def input_availability(self, stmt: Einsum) -> float:
        return max((self.read(a, stmt) for a in _all_accesses(stmt)), default=0.0)

    def read(self, access: Access, reader: Einsum) -> float:
        """Availability of one read: a loop's iterative tensor is complete after its loop."""
        avail = self.availability[access.tensor]
        loop = self.loop_of.get(access.tensor)
        if loop is not None and loop != self.block_of[id(reader)]:
            return avail + 0.5
        return avail

    def statement_pass(self) -> dict[str, int | None]:
        result: dict[str, int | None] = {}
        for stmt in self.cascade.einsums():
            run = self.pass_by_stmt[id(stmt)]
            previous = result.get(stmt.target)
            result[stmt.target] = run if previous is None else max(previous, run or 0)
        return result

    def reported_availability(self) -> dict[str, float]:
        return {
            name: avail + 0.5 if name in self.loop_of else avail
            for name, avail in self.availability.items()
        }

    def carries_rank(self, tensor: str) -> bool:
        """A produced tensor with a family rank among its dimensions other than a generation."""
        info = self.scope.tensors[tensor]
        return not info.is_input and any(
            r in self.family for k, r in enumerate(info.ranks) if k != info.generation
        )

    def live_across(self) -> tuple[LiveTensor, ...]:
        produced = self.statement_pass()
        readers: dict[str, set[int]] = {}
        for stmt in self.cascade.einsums():
            run = self.pass_by_stmt[id(stmt)]
            if run is None:
                continue
            for access in _all_accesses(stmt):
                readers.setdefault(access.tensor, set()).add(run)
        live = []
        for name, made in produced.items():
            if made is None or not self.carries_rank(name):
                continue
            later = tuple(sorted(k for k in readers.get(name, ()) if k > made))
            if later:
                live.append(LiveTensor(name, made, later))
        return tuple(live)


def _all_accesses(stmt: Einsum) -> list[Access]:
    """Every tensor read of a statement: its value and its predicate's lookups."""
    found = accesses(stmt.value)
    if stmt.predicate is not None:
        found += accesses(stmt.predicate)
    return found


def _data_accesses(expr: Expr) -> list[Access]:
    """Tensor reads that move data; comparisons (``where`` conditions) only test coordinates."""
    if isinstance(expr, Binary) and expr.op in ops.COMPARISONS:
        return []
    found = [expr] if isinstance(expr, Access) else []
    for child in children(expr):
        found += _data_accesses(child)
    return found
