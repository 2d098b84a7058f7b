"""Can a reduction's fiber be empty? (Then a row may sum to nothing and a rewrite that
divides by that sum must guard the division.)"""

from __future__ import annotations

from einscade.ir.cascade import Cascade, Einsum
from einscade.ir.expr import Name, accesses
from einscade.ir.scope import Scope


def fiber_may_be_empty(cascade: Cascade, stmt: Einsum, scope: Scope | None = None) -> bool:
    """Conservatively: a predicate on ``stmt`` or any producer of its operand, or a read
    whose index over a reduced rank is not a plain rank name (it may fall out of range)."""
    if stmt.reduce is None:
        return False
    scope = scope or Scope(cascade)
    reduced = set(stmt.reduce.ranks)
    producers = {s.target: s for s in cascade.einsums()}
    seen: set[str] = set()
    todo = [stmt]
    while todo:
        current = todo.pop()
        if current.predicate is not None:
            return True
        for node in accesses(current.value):
            for index in node.indices:
                if not isinstance(index, Name) and scope.ranks_in(index) & reduced:
                    return True
            producer = producers.get(node.tensor)
            if producer is not None and node.tensor not in seen:
                seen.add(node.tensor)
                todo.append(producer)
    return False
