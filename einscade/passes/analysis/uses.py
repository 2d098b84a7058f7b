"""Who reads what: read counts and readers of every tensor in a cascade."""

from __future__ import annotations

from collections import Counter

from einscade.ir.cascade import Cascade, Einsum
from einscade.ir.expr import accesses


def reads_of(stmt: Einsum) -> list[str]:
    """Tensors an Einsum reads, once per access (value, predicate and lhs generation)."""
    parts = [stmt.value, *stmt.indices]
    if stmt.predicate is not None:
        parts.append(stmt.predicate)
    return [a.tensor for part in parts for a in accesses(part)]


def read_counts(cascade: Cascade) -> Counter[str]:
    """How many accesses read each tensor; outputs count as one extra read."""
    counts: Counter[str] = Counter()
    for stmt in cascade.einsums():
        counts.update(reads_of(stmt))
    counts.update(cascade.outputs)
    return counts
