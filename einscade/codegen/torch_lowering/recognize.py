"""Find the roles of a masked softmax attention cascade (FuseMax's 3-pass form).

The torch lowering executes one shape of cascade block-sparsely: a score statement
``QK = Q * K (* scalars) :: sum(e) [if mask]``, zero or more elementwise score maps
(``S = QK * scale``, soft-capping, an additive bias, ALiBi), then the softmax tail
``GM = S :: max(m)``, ``SN = exp(S - GM)``, ``SD = SN :: sum(m)``, ``A = SN / SD``,
``AV = A * V :: sum(m)``. The roles are read off the statements' structure (which rank is
reduced where), not off tensor names, so any rank or tensor naming matches. Anything else
raises :class:`Unsupported` with the reason; the caller falls back to dense execution.
"""

from __future__ import annotations

from dataclasses import dataclass

from einscade.ir.cascade import Cascade, Einsum, Iterate
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, accesses, names
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope


class Unsupported(Exception):
    """The cascade is not a masked softmax attention the lowering knows; says why."""


@dataclass(frozen=True, slots=True)
class SoftmaxForm:
    """The roles of a softmax attention cascade.

    ``query``/``key``/``value`` are the reads of Q, K and V as the cascade writes them
    (K's and V's head index may be an expression such as ``h // G``). ``batch_ranks`` are
    the ranks of a score row besides the query rank, in the order of the score tensor.
    ``qk_factors`` are the scalar factors of the score product (``scale`` in the local
    families); ``score_maps`` the elementwise statements between the product and the max.
    ``product`` is the score product's tensor (``QK``). ``linear_scale`` is the product of
    every scalar factor when the whole score map is ``QK * c`` (folded into the matmul),
    else None (soft-capping, a bias, ALiBi).
    """

    product: str
    query: Access
    key: Access
    value: Access
    query_rank: str
    key_rank: str
    head_rank: str
    value_rank: str
    batch_ranks: tuple[str, ...]
    score_ranks: tuple[str, ...]
    qk_factors: tuple[Expr, ...]
    score_maps: tuple[Einsum, ...]
    output: str
    output_ranks: tuple[str, ...]
    linear_scale: tuple[Expr, ...] | None


def recognize(cascade: Cascade) -> SoftmaxForm:
    """The :class:`SoftmaxForm` of ``cascade``, or :class:`Unsupported` naming the mismatch."""
    if any(isinstance(s, Iterate) for s in cascade.body):
        raise Unsupported(f"@{cascade.name} has an iterate block (an already fused form)")
    if len(cascade.outputs) != 1:
        raise Unsupported(f"@{cascade.name} has {len(cascade.outputs)} outputs, expected 1")
    scope = Scope(cascade)
    defs = {s.target: s for s in cascade.einsums()}
    inputs = {d.name for d in cascade.inputs}
    av = defs[cascade.outputs[0]]
    key_rank = _single_reduced(av, "sum", "the output")
    a_read, v_read = _product_of_two(av, defs, inputs)
    sn_read, sd_read = _division(_definition(defs, a_read, "A"))
    s_read, gm_read = _exp_of_difference(_definition(defs, sn_read, "SN"))
    gm = _definition(defs, gm_read, "GM")
    sd = _definition(defs, sd_read, "SD")
    _expect(_single_reduced(gm, "max", "the row max") == key_rank, gm, "reduces another rank")
    _expect(_single_reduced(sd, "sum", "the row sum") == key_rank, sd, "reduces another rank")
    _expect(_is_read_of(gm.value, s_read.tensor), gm, f"does not read {s_read.tensor}")
    _expect(_is_read_of(sd.value, sn_read.tensor), sd, f"does not read {sn_read.tensor}")
    for stmt in (av, gm, sd, defs[a_read.tensor], defs[sn_read.tensor]):
        _expect(stmt.predicate is None, stmt, "has a predicate outside the score statements")
    maps, qk = _score_chain(defs, s_read.tensor)
    score_ranks = _plain(qk)
    for stmt in (*maps, defs[sn_read.tensor], defs[a_read.tensor]):
        _expect(_plain(stmt) == score_ranks, stmt, "is not over the score ranks")
    row_ranks = tuple(r for r in score_ranks if r != key_rank)
    for stmt in (gm, sd):
        _expect(_plain(stmt) == row_ranks, stmt, f"is not over the row ranks {row_ranks}")
    _check_score_reads(cascade, (*maps, gm, sd, defs[sn_read.tensor], defs[a_read.tensor], av),
                       {s.target for s in (qk, *maps, defs[sn_read.tensor], defs[a_read.tensor])},
                       score_ranks, {gm.target, sd.target}, row_ranks)  # fmt: skip
    return _form(scope, qk, tuple(reversed(maps)), v_read, av, key_rank, row_ranks, score_ranks)


def _form(scope, qk, maps, v_read, av, key_rank, row_ranks, score_ranks) -> SoftmaxForm:  # type: ignore[no-untyped-def]
    head_rank = _single_reduced(qk, "sum", "the score product")
    reads, factors = _qk_factors(qk)
    key_reads = [r for r in reads if _has_name(r, key_rank)]
    query_reads = [r for r in reads if not _has_name(r, key_rank)]
    _expect(len(key_reads) == 1 and len(query_reads) == 1, qk, "is not one Q read times one K read")
    query, key = query_reads[0], key_reads[0]
    query_rank = next((r for r in row_ranks if _has_name(query, r) and not _mentions(key, r)), None)
    _expect(query_rank is not None, qk, "has no query rank (a rank of Q and of the rows, not of K)")
    assert query_rank is not None
    batch = tuple(r for r in row_ranks if r != query_rank)
    value_rank = next((r for r in _plain(av) if r not in row_ranks), None)
    _expect(value_rank is not None, av, "keeps no value rank")
    assert value_rank is not None
    _expect(set(_plain(av)) == {*row_ranks, value_rank}, av, "keeps ranks besides rows and V's")
    _check_operand(qk, query, (*batch, query_rank, head_rank), plain=True)
    _check_operand(qk, key, (key_rank, head_rank), plain=False, others=(query_rank,))
    _check_operand(av, v_read, (key_rank, value_rank), plain=False, others=(query_rank,))
    for factor in factors:
        _expect(not scope.ranks_in(factor), qk, f"scales by {print_expr(factor)}, not a scalar")
    return SoftmaxForm(
        qk.target, query, key, v_read, query_rank, key_rank, head_rank, value_rank, batch,
        score_ranks, tuple(factors), maps, av.target, _plain(av),
        _linear_scale(scope, qk, maps, factors),
    )  # fmt: skip


def _linear_scale(scope: Scope, qk: Einsum, maps, factors: list[Expr]) -> tuple[Expr, ...] | None:  # type: ignore[no-untyped-def]
    """The scalar factors of a score map that only rescales (``S = QK * scale``)."""
    total = list(factors)
    source = qk.target
    for stmt in maps:
        scaled = _scaled_read(stmt.value)
        if scaled is None or stmt.predicate is not None or scaled[0].tensor != source:
            return None
        if any(scope.ranks_in(f) for f in scaled[1]):
            return None  # ``QK * p`` varies along the scores: not a scale
        total.extend(scaled[1])
        source = stmt.target
    return tuple(total)


# -- statement shapes ------------------------------------------------------------------


def _expect(condition: bool, stmt: Einsum, problem: str) -> None:
    if not condition:
        raise Unsupported(f"statement {stmt.target}: {problem}")


def _plain(stmt: Einsum) -> tuple[str, ...]:
    if not all(isinstance(i, Name) for i in stmt.indices):
        raise Unsupported(f"statement {stmt.target}: lhs indices are not plain ranks")
    return tuple(i.id for i in stmt.indices)  # type: ignore[union-attr]


def _single_reduced(stmt: Einsum, op: str, role: str) -> str:
    if stmt.reduce is None or stmt.reduce.op != op or len(stmt.reduce.ranks) != 1:
        raise Unsupported(f"{role} {stmt.target} is not a {op} over one rank")
    return stmt.reduce.ranks[0]


def _definition(defs: dict[str, Einsum], read: Access, role: str) -> Einsum:
    if read.tensor not in defs:
        raise Unsupported(f"{read.tensor} (the softmax's {role}) is an input, not a statement")
    return defs[read.tensor]


def _product_of_two(av: Einsum, defs: dict[str, Einsum], inputs: set[str]):  # type: ignore[no-untyped-def]
    value = av.value
    ok = isinstance(value, Binary) and value.op == "*"
    ok = ok and isinstance(value.lhs, Access) and isinstance(value.rhs, Access)  # type: ignore[union-attr]
    _expect(ok, av, "is not a product of the weights and V")
    lhs, rhs = value.lhs, value.rhs  # type: ignore[union-attr]
    if lhs.tensor in inputs and rhs.tensor in defs:
        lhs, rhs = rhs, lhs
    _expect(lhs.tensor in defs and rhs.tensor in inputs, av, "does not weight an input V")
    return lhs, rhs


def _division(stmt: Einsum) -> tuple[Access, Access]:
    value = stmt.value
    ok = isinstance(value, Binary) and value.op == "/"
    ok = ok and isinstance(value.lhs, Access) and isinstance(value.rhs, Access)  # type: ignore[union-attr]
    _expect(ok and stmt.reduce is None, stmt, "is not the normalisation SN / SD")
    return value.lhs, value.rhs  # type: ignore[union-attr,return-value]


def _exp_of_difference(stmt: Einsum) -> tuple[Access, Access]:
    value = stmt.value
    ok = isinstance(value, Call) and value.fn == "exp" and stmt.reduce is None
    inner = value.args[0] if ok else None  # type: ignore[union-attr]
    ok = ok and isinstance(inner, Binary) and inner.op == "-"
    ok = ok and isinstance(inner.lhs, Access) and isinstance(inner.rhs, Access)  # type: ignore[union-attr]
    _expect(ok, stmt, "is not exp(S - GM)")
    return inner.lhs, inner.rhs  # type: ignore[union-attr,return-value]


def _is_read_of(expr: Expr, tensor: str) -> bool:
    return isinstance(expr, Access) and expr.tensor == tensor


def _score_chain(defs: dict[str, Einsum], tensor: str) -> tuple[list[Einsum], Einsum]:
    """Elementwise maps from the score product to ``tensor`` (last first), and the product."""
    maps: list[Einsum] = []
    while True:
        if tensor not in defs:
            raise Unsupported(f"the scores {tensor} are an input, not a statement")
        stmt = defs[tensor]
        if stmt.reduce is not None:
            return maps, stmt
        defined = [a for a in accesses(stmt.value) if a.tensor in defs]
        _expect(len(defined) == 1, stmt, "is not an elementwise map of one score tensor")
        maps.append(stmt)
        tensor = defined[0].tensor


def _check_score_reads(cascade, stmts, scores, score_ranks, rows, row_ranks) -> None:  # type: ignore[no-untyped-def]
    """Scores and rows are read at their own points (no shifted or transposed reads)."""
    for stmt in stmts:
        for read in accesses(stmt.value):
            expected = score_ranks if read.tensor in scores else None
            expected = row_ranks if read.tensor in rows else expected
            if expected is not None and read.indices != tuple(Name(r) for r in expected):
                raise Unsupported(f"statement {stmt.target}: reads {print_expr(read)} "
                                  f"at other points than [{', '.join(expected)}]")  # fmt: skip


def _qk_factors(qk: Einsum) -> tuple[list[Access], list[Expr]]:
    reads: list[Access] = []
    factors: list[Expr] = []
    for factor in _flatten_product(qk.value):
        (reads if isinstance(factor, Access) else factors).append(factor)  # type: ignore[arg-type]
    for factor in factors:
        _expect(not accesses(factor), qk, f"factor {print_expr(factor)} reads a tensor")
    return reads, factors


def _flatten_product(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "*":
        return _flatten_product(expr.lhs) + _flatten_product(expr.rhs)
    return [expr]


def _scaled_read(expr: Expr) -> tuple[Access, list[Expr]] | None:
    """``X * c * ...`` or ``X / c`` with scalar c: (read of X, factors); else None."""
    if isinstance(expr, Binary) and expr.op == "/" and not accesses(expr.rhs):
        inner = _scaled_read(expr.lhs)
        if inner is not None:
            return inner[0], inner[1] + [Binary("/", Num(1.0), expr.rhs)]
        return None
    factors = _flatten_product(expr)
    reads = [f for f in factors if isinstance(f, Access)]
    scalars = [f for f in factors if not isinstance(f, Access)]
    if len(reads) != 1 or any(accesses(f) for f in scalars):
        return None
    return reads[0], scalars


def _has_name(read: Access, rank: str) -> bool:
    return any(isinstance(i, Name) and i.id == rank for i in read.indices)


def _mentions(read: Access, rank: str) -> bool:
    return any(rank in names(i) for i in read.indices)


def _check_operand(stmt, read, required, *, plain, others=()) -> None:  # type: ignore[no-untyped-def]
    """``required`` ranks appear once each as plain indices; with ``plain`` every index is a
    plain rank, otherwise the other indices must not mention ``required`` or ``others``."""
    found = [i.id for i in read.indices if isinstance(i, Name) and i.id in required]
    _expect(sorted(found) == sorted(required), stmt,
            f"{print_expr(read)} needs plain indices {', '.join(required)}")  # fmt: skip
    for index in read.indices:
        if isinstance(index, Name) and index.id in required:
            continue
        _expect(not plain or isinstance(index, Name), stmt,
                f"{print_expr(read)}: index {print_expr(index)} is not a plain rank")  # fmt: skip
        clash = sorted(names(index) & {*required, *others})
        if clash:
            raise Unsupported(f"statement {stmt.target}: {print_expr(read)}: index "
                              f"{print_expr(index)} reads {clash[0]}")  # fmt: skip
