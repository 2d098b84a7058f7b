"""dce: remove Einsums whose tensor no output needs, even indirectly.

A tensor is *live* if it is an output or a live tensor's statement reads it (in its value, its
predicate or an index). Every statement defining a dead tensor goes, so an iterative tensor
loses its generation 0 and its update together, and an ``iterate`` block left empty goes too.
Declarations (sizes, params, grids, lets) stay: they are the cascade's run-time interface.

Before (``X2`` and ``RS`` feed nothing that reaches ``AV``)::

    cascade @a(Q[e, p], K[e, m], V[f, m]) -> (AV) {
      size M0 = 4
      QK[m, p] = Q[e, p] * K[e, m] :: sum(e)
      X2[m, p] = exp(QK[m, p])
      iterate m1 {
        RS[0, p] = 0
        RS[m1 + 1, p] = RS[m1, p] + X2[m1 * M0, p]
        RM[0, p] = -inf
        RM[m1 + 1, p] = max(RM[m1, p], QK[m1 * M0, p])
      }
      AV[f, p] = V[f, m] * QK[m, p] :: sum(m)
    }

After (``RM`` is dead as well: only its own update reads it)::

    cascade @a(Q[e, p], K[e, m], V[f, m]) -> (AV) {
      size M0 = 4
      QK[m, p] = Q[e, p] * K[e, m] :: sum(e)
      AV[f, p] = V[f, m] * QK[m, p] :: sum(m)
    }

Notes: one ``rewrite`` per removed tensor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from einscade.ir.cascade import Cascade, Einsum, Iterate, Statement
from einscade.ir.expr import accesses
from einscade.passes.base import Note, Pass, PassResult, register


def reads(stmt: Einsum) -> set[str]:
    """Tensors ``stmt`` reads: in its value, its predicate, and lookups inside indices."""
    parts = [stmt.value] if stmt.predicate is None else [stmt.value, stmt.predicate]
    return {access.tensor for part in parts for access in accesses(part)}


def live_tensors(cascade: Cascade) -> set[str]:
    """The outputs and every tensor they read, transitively (inputs included)."""
    needs: dict[str, set[str]] = {}
    for stmt in cascade.einsums():
        needs.setdefault(stmt.target, set()).update(reads(stmt))
    live: set[str] = set()
    pending = list(cascade.outputs)
    while pending:
        name = pending.pop()
        if name not in live:
            live.add(name)
            pending.extend(needs.get(name, ()))
    return live


def _keep_live(body: tuple[Statement, ...], live: set[str]) -> tuple[Statement, ...]:
    kept: list[Statement] = []
    for stmt in body:
        if isinstance(stmt, Einsum):
            if stmt.target in live:
                kept.append(stmt)
            continue
        inner = tuple(s for s in stmt.body if s.target in live)
        # Keep the original node when untouched so an unchanged cascade stays identical.
        if inner == stmt.body:
            kept.append(stmt)
        elif inner:
            kept.append(dataclasses.replace(stmt, body=inner))
    return tuple(kept)


def _removal_notes(cascade: Cascade, live: set[str]) -> tuple[Note, ...]:
    counts: dict[str, int] = {}
    where: dict[str, str] = {}
    for stmt in cascade.body:
        inner = stmt.body if isinstance(stmt, Iterate) else (stmt,)
        for einsum in inner:
            if einsum.target not in live:
                counts[einsum.target] = counts.get(einsum.target, 0) + 1
                if isinstance(stmt, Iterate):
                    where[einsum.target] = f" in iterate {stmt.rank}"
    outputs = ("output " if len(cascade.outputs) == 1 else "outputs ") + ", ".join(cascade.outputs)
    notes = []
    for name, count in counts.items():
        plural = "Einsum" if count == 1 else "Einsums"
        place = where.get(name, "")
        message = f"removed {name} ({count} {plural}{place}): no path to {outputs}"
        notes.append(Note("rewrite", message))
    return tuple(notes)


@register
@dataclass(frozen=True)
class DeadCode(Pass):
    """Remove statements of tensors that no output needs; see the module docstring."""

    name = "dce"

    def run(self, cascade: Cascade) -> PassResult:
        live = live_tensors(cascade)
        body = _keep_live(cascade.body, live)
        if body == cascade.body:
            return PassResult(cascade)
        notes = _removal_notes(cascade, live)
        return PassResult(dataclasses.replace(cascade, body=body), notes)
