"""A cascade as plain data (dicts, lists, strings, numbers): what ``einscade show --format
json`` prints and what ``einscade explain`` stores in ``report.json``."""

from __future__ import annotations

from einscade.ir import print_cascade, print_einsum, print_expr
from einscade.ir.cascade import Cascade
from einscade.ir.scope import Scope
from einscade.passes.analysis.pass_count import PassReport, pass_count
from einscade.passes.analysis.shapes import resolve_sizes, statement_work


def statement_facts(cascade: Cascade) -> list[dict[str, object]]:
    """One entry per Einsum in program order: its text, target, kept ranks, iteration space,
    reduction, predicate text and enclosing ``iterate`` rank (None at top level)."""
    scope = Scope(cascade)
    facts = []
    for stmt in cascade.einsums():
        reduce = None
        if stmt.reduce is not None:
            reduce = {"op": stmt.reduce.op, "ranks": list(stmt.reduce.ranks)}
        facts.append(
            {
                "text": print_einsum(stmt),
                "target": stmt.target,
                "ranks": list(scope.tensors[stmt.target].ranks),
                "iteration_ranks": list(scope.iteration_ranks(stmt)),
                "value": print_expr(stmt.value),
                "reduce": reduce,
                "predicate": None if stmt.predicate is None else print_expr(stmt.predicate),
                "iterate": scope.iterate_rank(stmt),
            }
        )
    return facts


def pass_count_facts(report: PassReport) -> dict[str, object]:
    """A pass report as data: the count, each tensor's pass and the tensors live across."""
    return {
        "rank": report.rank,
        "family": list(report.family),
        "passes": report.passes,
        "statement_pass": dict(report.statement_pass),
        "availability": dict(report.availability),
        "live_across": [
            {"tensor": t.name, "produced_in": t.produced_in, "read_in": list(t.read_in)}
            for t in report.live_across
        ],
    }


def work_facts(cascade: Cascade, sizes: dict[str, int]) -> dict[str, object]:
    """The dense work table of ``einscade show``: one row per Einsum, the total, and the
    sizes it was computed at (those the cascade uses)."""
    rows = statement_work(cascade, sizes)
    resolved = resolve_sizes(cascade, sizes)
    used = Scope(cascade).sizes
    return {
        "rows": [
            {
                "tensor": row.target,
                "ranks": list(row.ranks),
                "shape": list(row.shape),
                "points": row.points,
                "flops": row.flops,
                "masked": row.masked,
            }
            for row in rows
        ],
        "total_flops": sum(row.flops for row in rows),
        "sizes": {k: v for k, v in sorted(resolved.items()) if k in used},
    }


def cascade_document(
    cascade: Cascade, sizes: dict[str, int], rank: str | None
) -> dict[str, object]:
    """Everything ``einscade show`` prints, as one JSON-ready document. ``rank`` is the rank
    whose passes are counted (None: no pass count)."""
    return {
        "name": cascade.name,
        "text": print_cascade(cascade),
        "inputs": {d.name: list(d.ranks) for d in cascade.inputs},
        "outputs": list(cascade.outputs),
        "statements": statement_facts(cascade),
        "pass_count": None if rank is None else pass_count_facts(pass_count(cascade, rank)),
        "work": work_facts(cascade, sizes),
    }
