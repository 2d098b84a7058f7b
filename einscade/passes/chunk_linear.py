"""chunk-linear: run an additive recurrence over chunks of its rank (Lightning Attention-2).

An ``iterate m`` block whose running tensors are plain sums, ``T[.., m + 1] = T[.., m] +
term(m)``, holds at each step the prefix sum of its terms. Split ``m`` into chunks, ``m =
m1 * M0 + m0``: then ``T[c + 1] = T[c] + sum over chunk c of term`` (one update per chunk),
and a read of ``T[t + 1]`` at step ``t`` of chunk ``c`` equals ``T[c]`` plus the sum of the
terms at the chunk's steps ``s <= t`` (``s < t`` for a read of ``T[t]``). A statement that
uses the state as one factor of a sum of products, ``X[t] = sum_e F(t, e) * T[e, t + 1]``,
therefore splits into an *inter-chunk* part that reads the chunk's starting state and an
*intra-chunk* part, ``sum_{s <= t} sum_e F(t, e) * term(s, e)``: a contraction over two
positions of the same chunk, the query position ``t`` (rank ``m0q``) and the key position
``s`` (rank ``m0``), masked ``m0 <= m0q``. Its factors that vary along ``e`` are contracted
first into chunk-local scores (``M0 x M0``, shared by every statement with the same
factors), then summed over ``m0`` with the rest. Nothing is matched against linear
attention: the pass reads the recurrence, checks with sympy that each update is the old
state plus a term that reads no state, and declines with the reason otherwise (a decay
factor, a state read non-linearly, a state inside its own term).

Before (causal linear attention, one state update per token)::

    iterate m {
      KV[b, h, e, f, 0] = 0
      Z[b, h, e, 0] = 0
      KV[b, h, e, f, m + 1] = KV[b, h, e, f, m] + FK[b, h, m, e] * V[b, h, m, f]
      Z[b, h, e, m + 1] = Z[b, h, e, m] + FK[b, h, m, e]
      SNV[b, h, m, f] = FQ[b, h, m, e] * KV[b, h, e, f, m + 1] :: sum(e)
      SD[b, h, m] = FQ[b, h, m, e] * Z[b, h, e, m + 1] :: sum(e)
    }
    AV[b, h, p, f] = SNV[b, h, p, f] / SD[b, h, p]

After (``chunk-linear{block=64}``; writing ``q = m1 * M0 + m0q`` and ``k = m1 * M0 + m0``)::

    size M0 = 64
    size M1 = (M + M0 - 1) // M0
    size M0Q = M0
    iterate m1 {
      KV[b, h, e, f, 0] = 0
      Z[b, h, e, 0] = 0
      S[b, h, m1, m0q, m0] = FQ[b, h, q, e] * FK[b, h, k, e] :: sum(e) if m0 <= m0q
      PSNV[b, h, m1, m0q, f] = FQ[b, h, q, e] * KV[b, h, e, f, m1] :: sum(e)
      LSNV[b, h, m1, m0q, f] = S[b, h, m1, m0q, m0] * V[b, h, k, f] :: sum(m0)
      SNV[b, h, m1, m0q, f] = PSNV[b, h, m1, m0q, f] + LSNV[b, h, m1, m0q, f]
      PSD[b, h, m1, m0q] = FQ[b, h, q, e] * Z[b, h, e, m1] :: sum(e)
      LSD[b, h, m1, m0q] = S[b, h, m1, m0q, m0] :: sum(m0)
      SD[b, h, m1, m0q] = PSD[b, h, m1, m0q] + LSD[b, h, m1, m0q]
      LKV[b, h, e, f, m1] = FK[b, h, k, e] * V[b, h, k, f] :: sum(m0)
      KV[b, h, e, f, m1 + 1] = KV[b, h, e, f, m1] + LKV[b, h, e, f, m1]
      LZ[b, h, e, m1] = FK[b, h, k, e] :: sum(m0)
      Z[b, h, e, m1 + 1] = Z[b, h, e, m1] + LZ[b, h, e, m1]
    }
    AV[b, h, p, f] = SNV[b, h, p // M0, p % M0, f] / SD[b, h, p // M0, p % M0]

Per-step tensors get the chunk layout ``[.., m1, m0q, ..]`` and are read back after the loop
at ``(i // M0, i % M0)``; a final state ``T[.., M]`` is read as ``T[.., M1]``. Reads past the
end of ``m`` in the last chunk are absent, so a ragged tail adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import sympy

from einscade.ir.cascade import Cascade, Einsum, Iterate, Reduce, SizeDef, Statement, size_symbol
from einscade.ir.errors import EinscadeError
from einscade.ir.expr import (
    Access,
    Binary,
    Expr,
    Name,
    Num,
    accesses,
    map_expr,
    walk,
)
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope, generation_index
from einscade.ir.symbolic import SymbolTable, from_sympy, to_sympy
from einscade.passes.analysis.uses import reads_of
from einscade.passes.associate import operation, partition
from einscade.passes.base import Note, Pass, PassResult, register
from einscade.passes.defer_div import _Factors, join_product, split_product
from einscade.passes.naming import fresh_name
from einscade.passes.rank_split import RankSplit, SplitError


class Decline(Exception):
    """The recurrence cannot be chunked; the message says why."""


@dataclass(frozen=True, slots=True)
class _State:
    """A running sum ``T[.., r + 1] = T[.., r] + term``; ``ranks`` name T's other dims."""

    name: str
    update: Einsum
    term: Expr
    ranks: tuple[str, ...]
    generation: int


def _chunk_coordinate(outer: str, inner: str, block_size: str) -> Expr:
    return Binary("+", Binary("*", Name(outer), Name(block_size)), Name(inner))


class _Chunking:
    def __init__(self, cascade: Cascade, loop: Iterate, block: int):
        self.cascade = cascade
        self.loop = loop
        self.rank = loop.rank
        self.block = block
        self.scope = Scope(cascade)
        self.taken = self.scope.taken_names()
        self.r1 = fresh_name(self.rank + "1", self.taken)
        self.k0 = fresh_name(self.rank + "0", self.taken)
        self.q0 = fresh_name(self.rank + "0q", self.taken)
        self.taken |= {size_symbol(r) for r in (self.r1, self.k0, self.q0)}
        self.inits = [s for s in loop.body if self.kind(s) == "init"]
        self.updates = [s for s in loop.body if self.kind(s) == "next"]
        self.steps = [s for s in loop.body if self.kind(s) is None]
        per_step = frozenset(s.target for s in self.steps)
        chunk = size_symbol(self.k0)
        self.keys = RankSplit(
            self.rank, self.r1, self.k0, _chunk_coordinate(self.r1, self.k0, chunk), {}, per_step
        )
        self.queries = RankSplit(
            self.rank, self.r1, self.q0, _chunk_coordinate(self.r1, self.q0, chunk), {}, per_step
        )
        self.scores: dict[tuple[Expr, ...], str] = {}
        self.updated = [s.target for s in self.updates]
        self.split_readers: list[str] = []

    def kind(self, stmt: Einsum) -> str | None:
        kinds = {generation_index(i, self.rank) for i in stmt.indices} - {None}
        return kinds.pop() if kinds else None

    # -- the recurrence ------------------------------------------------------------------
    def states(self) -> dict[str, _State]:
        if not self.updates:
            raise Decline("it carries no running tensor")
        if self.rank in self.scope.grids or self.rank in self.scope.axis_of:
            raise Decline(f"{self.rank!r} is a grid rank")
        found = {u.target: self.additive(u) for u in self.updates}
        for state in found.values():
            self.check_term(state, found)
        return found

    def additive(self, update: Einsum) -> _State:
        """Check with sympy that ``update`` is the old state plus a term free of it."""
        name = update.target
        gen = next(k for k, i in enumerate(update.indices) if generation_index(i, self.rank))
        old = Access(name, _at(update.indices, gen, Name(self.rank)))
        shown = f"{name}[.., {self.rank} + 1]"
        if update.reduce is not None or update.predicate is not None:
            raise Decline(f"{shown} is a reduction or masked, not a running sum")
        table = SymbolTable()
        value = to_sympy(update.value, table)
        state = table.symbol(old)
        if not value.is_polynomial(state) or sympy.degree(value, state) != 1:
            how = operation(update.value)
            raise Decline(f"{shown} is not linear in {name}[.., {self.rank}] (through {how})")
        slope = sympy.simplify(sympy.diff(value, state))
        if slope != 1:
            raise Decline(f"{shown} scales {name}[.., {self.rank}] by {slope}, not a plain sum")
        term = sympy.simplify(value - state)
        ranks = tuple(i.id for i in update.indices if isinstance(i, Name))
        return _State(name, update, self.term_expr(update.value, old, term, table), ranks, gen)

    def term_expr(self, value: Expr, old: Access, term: sympy.Expr, table: SymbolTable) -> Expr:
        """The term as written (``old + term`` or ``term + old``), else rebuilt by sympy."""
        if isinstance(value, Binary) and value.op == "+":
            if value.lhs == old:
                return value.rhs
            if value.rhs == old:
                return value.lhs
        try:
            return from_sympy(term, table)
        except ValueError as error:
            raise Decline(f"{old.tensor}: {error}") from None

    def check_term(self, state: _State, states: dict[str, _State]) -> None:
        if self.rank not in self.scope.ranks_in(state.term):
            # A chunk's sum of it would reduce over a rank its operand does not read, which
            # the IR rejects (a count would need the rank in the value).
            raise Decline(f"the term of {state.name} does not vary with {self.rank!r}")
        found = self.state_dependencies(state.term, states)
        if found:
            via = "" if found[0] in states else f" through {found[0]}"
            raise Decline(f"the term of {state.name} reads a running tensor{via}")

    def state_dependencies(self, expr: Expr, states: dict[str, _State]) -> list[str]:
        """Tensors read by ``expr`` that are running tensors or per-step tensors built on one."""
        by_target = {s.target: s for s in self.steps}
        found = []
        for access in accesses(expr):
            if access.tensor in states or self.depends(access.tensor, states, by_target):
                found.append(access.tensor)
        return found

    def depends(self, tensor: str, states: dict[str, _State], by_target: dict[str, Einsum]) -> bool:
        stmt = by_target.get(tensor)
        if stmt is None:
            return False
        return any(t in states or self.depends(t, states, by_target) for t in reads_of(stmt))

    # -- a statement that reads a running tensor -----------------------------------------
    def state_read(self, stmt: Einsum, states: dict[str, _State]) -> tuple[Access, _Factors] | None:
        """(the running tensor's read, the other factors) of a linear reader, None if ``stmt``
        reads no running tensor directly; declines if it reads one any other way."""
        direct = [a for a in accesses(stmt.value) if a.tensor in states]
        if not direct:
            return None
        factors = split_product(stmt.value)
        reads = [f for f in factors.numerator if isinstance(f, Access) and f.tensor in states]
        others = _Factors(
            tuple(f for f in factors.numerator if all(f is not r for r in reads)),
            factors.denominator,
        )
        for factor in others.numerator + others.denominator:
            found = self.state_dependencies(factor, states)
            if found and isinstance(factor, Access):
                raise Decline(f"{stmt.target} also reads {found[0]}, built on a running tensor")
            if found:
                raise Decline(f"{found[0]} passes through {operation(factor)} in {stmt.target}")
        if len(reads) != 1:
            raise Decline(f"{stmt.target} multiplies {len(reads)} running tensors")
        if stmt.reduce is not None and stmt.reduce.op != "sum":
            raise Decline(f"{stmt.target} takes the {stmt.reduce.op} of a running tensor")
        if stmt.predicate is not None:
            raise Decline(f"{stmt.target} masks a running tensor's read")
        return reads[0], others

    def inclusive(self, read: Access, state: _State) -> bool:
        """True for a read of ``T[.., r + 1]`` (steps up to this one), False for ``T[.., r]``."""
        index = read.indices[state.generation]
        if index == Name(self.rank):
            return False
        if generation_index(index, self.rank) == "next":
            return True
        raise Decline(f"{read.tensor} is read at generation {print_expr(index)}")

    def split_reader(
        self, stmt: Einsum, read: Access, others: _Factors, state: _State
    ) -> list[Einsum]:
        """``X = P + L``: the chunk's starting state (inter) plus the chunk's own steps (intra)."""
        inclusive = self.inclusive(read, state)
        rest_idx = [i for k, i in enumerate(read.indices) if k != state.generation]
        if any(self.rank in self.scope.ranks_in(i) for i in rest_idx):
            raise Decline(f"{stmt.target} reads {read.tensor} at a position of {self.rank!r}")
        lhs = self.split_lhs(stmt)
        query_factors = _map_factors(others, self.queries.expr)
        start = Access(read.tensor, _at(read.indices, state.generation, Name(self.r1)))
        inter_value = join_product(_combine(query_factors, _Factors((start,), ())))
        inter = Einsum(fresh_name("P" + stmt.target, self.taken), lhs, inter_value, stmt.reduce)
        every = _combine(query_factors, self.term_at(state, rest_idx))
        mask = Binary("<=" if inclusive else "<", Name(self.k0), Name(self.q0))
        reduced = stmt.reduce.ranks if stmt.reduce is not None else ()
        made = self.intra(stmt, lhs, every, reduced, mask)
        whole = Einsum(stmt.target, lhs, Binary("+", _read(inter), _read(made[-1])), loc=stmt.loc)
        return [*made[:-1], inter, made[-1], whole]

    def term_at(self, state: _State, indices: list[Expr]) -> _Factors:
        """The state's term at the reader's indices, at the key position of the chunk."""
        bindings = dict(zip(state.ranks, indices, strict=True))
        bound = map_expr(state.term, lambda n: bindings.get(n.id) if isinstance(n, Name) else None)
        try:
            return _map_factors(split_product(bound), self.keys.expr)
        except SplitError as error:
            raise Decline(str(error)) from None

    def intra(
        self,
        stmt: Einsum,
        lhs: tuple[Expr, ...],
        every: _Factors,
        reduced: tuple[str, ...],
        mask: Expr,
    ) -> list[Einsum]:
        """The chunk's own steps: scores over the reader's reduced ranks first, then m0."""
        mask_left: Expr | None = mask
        made: list[Einsum] = []
        if reduced:
            first, rest = partition(every, lambda f: bool(self.scope.ranks_in(f) & set(reduced)))
            scores, stmt_scores = self.score(join_product(first), reduced, mask)
            every = _combine(_Factors((scores,), ()), rest)
            if stmt_scores.predicate is not None:
                mask_left = None
            if stmt_scores.target not in self.emitted:
                made.append(stmt_scores)
                self.emitted.add(stmt_scores.target)
        local = Einsum(
            fresh_name("L" + stmt.target, self.taken), lhs, join_product(every),
            Reduce("sum", (self.k0,)), mask_left,
        )  # fmt: skip
        return [*made, local]

    def score(self, value: Expr, reduced: tuple[str, ...], mask: Expr) -> tuple[Access, Einsum]:
        """``S[.., m1, m0q, m0] = value :: sum(reduced) if mask``, shared when it repeats."""
        ranks = [r for r in self.ranks_in_order(value) if r not in reduced]
        if self.r1 not in ranks:
            raise Decline("the intra-chunk scores do not depend on the chunk")
        predicate = mask if {self.k0, self.q0} <= set(ranks) else None
        key = (value, predicate or Num(0), *(Name(r) for r in reduced))
        lhs = tuple(Name(r) for r in ranks)
        name = self.scores.get(key) or fresh_name("S", self.taken)
        self.scores[key] = name
        return Access(name, lhs), Einsum(name, lhs, value, Reduce("sum", reduced), predicate)

    def ranks_in_order(self, expr: Expr) -> list[str]:
        """Ranks read by ``expr`` in order of first use, the new chunk ranks included."""
        known = self.scope.ranks | {self.r1, self.k0, self.q0}
        ordered: list[str] = []
        for node in walk(self.scope.expand(expr)):
            if isinstance(node, Name) and node.id in known and node.id not in ordered:
                ordered.append(node.id)
        return ordered

    # -- the rest of the body ------------------------------------------------------------
    def split_lhs(self, stmt: Einsum) -> tuple[Expr, ...]:
        return self.queries.indices(stmt.target, stmt.indices)

    def per_step(self, stmt: Einsum) -> Einsum:
        predicate = self.queries.expr(stmt.predicate) if stmt.predicate is not None else None
        return replace(
            stmt, indices=self.split_lhs(stmt), value=self.queries.expr(stmt.value),
            predicate=predicate,
        )  # fmt: skip

    def chunk_update(self, state: _State) -> list[Einsum]:
        """``LT = sum over the chunk of the term``; ``T[.., m1 + 1] = T[.., m1] + LT``."""
        update = state.update
        lhs_at = _at(update.indices, state.generation, Name(self.r1))
        term = self.keys.expr(state.term)
        in_range = None
        if not self.keys.reads_inner(term):
            in_range = Binary("<", self.keys.coordinate, Name(size_symbol(self.rank)))
        local = Einsum(
            fresh_name("L" + state.name, self.taken), lhs_at, term,
            Reduce("sum", (self.k0,)), in_range,
        )  # fmt: skip
        old = Access(state.name, lhs_at)
        new_lhs = _at(update.indices, state.generation, Binary("+", Name(self.r1), Num(1)))
        running = Einsum(state.name, new_lhs, Binary("+", old, _read(local)), loc=update.loc)
        return [local, running]

    def after(self, stmt: Einsum, states: dict[str, _State]) -> Einsum:
        """A statement after the loop: per-step reads at (i // M0, i % M0), T[M] at T[M1]."""
        chunk = Name(size_symbol(self.k0))
        per_step = {s.target for s in self.steps}

        def reread(node: Expr) -> Expr | None:
            if isinstance(node, Access) and node.tensor in per_step:
                return self.reread_step(node, chunk)
            if isinstance(node, Access) and node.tensor in states:
                return self.reread_state(node, states[node.tensor])
            return None

        predicate = map_expr(stmt.predicate, reread) if stmt.predicate is not None else None
        return replace(stmt, value=map_expr(stmt.value, reread), predicate=predicate)

    def reread_step(self, node: Access, chunk: Expr) -> Access:
        declared = self.scope.tensors[node.tensor].ranks
        indices: list[Expr] = []
        for rank, index in zip(declared, node.indices, strict=True):
            if rank == self.rank:
                indices += [Binary("//", index, chunk), Binary("%", index, chunk)]
            else:
                indices.append(index)
        return Access(node.tensor, tuple(indices))

    def reread_state(self, node: Access, state: _State) -> Access:
        index = node.indices[state.generation]
        if index != Name(size_symbol(self.rank)):
            raise Decline(f"{node.tensor} is read after the loop at generation {print_expr(index)}")
        last = Name(size_symbol(self.r1))
        return Access(node.tensor, _at(node.indices, state.generation, last))

    # -- building ------------------------------------------------------------------------
    def build(self) -> Cascade:
        states = self.states()
        self.emitted: set[str] = set()
        body: list[Einsum] = list(self.inits)
        try:
            for stmt in self.steps:
                found = self.state_read(stmt, states)
                if found is None:
                    body.append(self.per_step(stmt))
                else:
                    read, others = found
                    self.split_readers.append(stmt.target)
                    body += self.split_reader(stmt, read, others, states[read.tensor])
            for update in self.updates:
                body += self.chunk_update(states[update.target])
        except SplitError as error:
            raise Decline(str(error)) from None
        return self.assemble(Iterate(self.r1, tuple(body), self.loop.loc), states)

    def assemble(self, block: Iterate, states: dict[str, _State]) -> Cascade:
        rest: list[Statement] = []
        seen_loop = False
        for stmt in self.cascade.body:
            if stmt is self.loop:
                rest.append(block)
                seen_loop = True
            elif seen_loop and isinstance(stmt, Einsum):
                rest.append(self.after(stmt, states))
            elif seen_loop and isinstance(stmt, Iterate):
                inner = tuple(self.after(s, states) for s in stmt.body)
                rest.append(replace(stmt, body=inner))
            else:
                rest.append(stmt)
        return replace(self.cascade, body=tuple(rest), sizes=self.cascade.sizes + self.sizes())

    def sizes(self) -> tuple[SizeDef, ...]:
        chunk, count = size_symbol(self.k0), size_symbol(self.r1)
        extent = Name(size_symbol(self.rank))
        chunks = Binary("//", Binary("-", Binary("+", extent, Name(chunk)), Num(1)), Name(chunk))
        return (
            SizeDef(chunk, Num(self.block)),
            SizeDef(count, chunks),
            SizeDef(size_symbol(self.q0), Name(chunk)),
        )


def _read(stmt: Einsum) -> Access:
    return Access(stmt.target, stmt.indices)


def _at(indices: tuple[Expr, ...], position: int, index: Expr) -> tuple[Expr, ...]:
    """``indices`` with the one at ``position`` replaced (a generation, usually)."""
    return tuple(index if k == position else i for k, i in enumerate(indices))


def _map_factors(factors: _Factors, fn: Callable[[Expr], Expr]) -> _Factors:
    return _Factors(tuple(map(fn, factors.numerator)), tuple(map(fn, factors.denominator)))


def _combine(a: _Factors, b: _Factors) -> _Factors:
    return _Factors(a.numerator + b.numerator, a.denominator + b.denominator)


@register
@dataclass(frozen=True)
class ChunkLinear(Pass):
    """Run every additive ``iterate`` recurrence over chunks of ``block`` steps."""

    name = "chunk-linear"
    block: int = 64

    def __post_init__(self) -> None:
        if self.block < 1:
            raise EinscadeError(f"pass 'chunk-linear': block must be at least 1, got {self.block}")

    def run(self, cascade: Cascade) -> PassResult:
        notes: list[Note] = []
        loops = [s for s in cascade.body if isinstance(s, Iterate)]
        if not loops:
            notes.append(Note("decline", "no 'iterate' block to chunk"))
        for loop in loops:
            current = next(
                s for s in cascade.body if isinstance(s, Iterate) and s.rank == loop.rank
            )
            try:
                chunking = _Chunking(cascade, current, self.block)
                cascade = chunking.build()
            except Decline as why:
                notes.append(Note("decline", f"iterate {loop.rank}: {why}"))
                continue
            states = ", ".join(chunking.updated)
            readers = ", ".join(chunking.split_readers) or "nothing"
            message = (
                f"iterate {loop.rank}: chunks of {self.block} over {chunking.r1}; running sums "
                f"[{states}] advance once per chunk; [{readers}] = chunk start + intra-chunk part"
            )
            notes.append(Note("rewrite", message))
        return PassResult(cascade, tuple(notes))
