"""online-softmax: derive the 1-pass form by carrying running reductions with corrections.

For a rank ``m`` that the cascade walks more than once because a reduction over ``m`` (the
softmax max) is read while walking ``m`` again, split ``m`` into tiles ``m = m1 * M0 + m0``
and iterate over ``m1``. Each reduction over ``m`` becomes a tile-local reduction over
``m0`` plus a running value across tiles. A sum whose operand reads running values, say
``F(x, g)``, is carried as ``R' = L + R * F(x, g_new) / F(x, g_old)``; the pass asks sympy for
that ratio and accepts it only if it does not depend on the data ``x`` (the operand is
separable, ``F = G(x) * H(g)``), otherwise it declines and says why. Nothing is matched
against a fixed attention template: the same derivation serves every softmax stage.

Before (2 passes over m, after defer-div)::

    GM[p] = QK[m, p] :: max(m)
    SN[m, p] = exp(QK[m, p] - GM[p])
    SD[p] = SN[m, p] :: sum(m)
    SNV[f, p] = SN[m, p] * V[f, m] :: sum(m)
    AV[f, p] = SNV[f, p] / SD[p]

After (1 pass; ``QK`` is tiled the same way)::

    size M0 = 64
    size M1 = (M + M0 - 1) // M0
    iterate m1 {
      RGM[0, p] = -inf
      RSD[0, p] = 0
      RSNV[0, f, p] = 0
      QK[m1, m0, p] = Q[e, p] * K[e, m1 * M0 + m0] :: sum(e)
      LGM[m1, p] = QK[m1, m0, p] :: max(m0)
      RGM[m1 + 1, p] = max(RGM[m1, p], LGM[m1, p])
      SN[m1, m0, p] = exp(QK[m1, m0, p] - RGM[m1 + 1, p])
      LSD[m1, p] = SN[m1, m0, p] :: sum(m0)
      CGM[m1, p] = exp(RGM[m1, p] - RGM[m1 + 1, p])
      RSD[m1 + 1, p] = LSD[m1, p] + RSD[m1, p] * CGM[m1, p]
      LSNV[m1, f, p] = SN[m1, m0, p] * V[f, m1 * M0 + m0] :: sum(m0)
      RSNV[m1 + 1, f, p] = LSNV[m1, f, p] + RSNV[m1, f, p] * CGM[m1, p]
    }
    SD[p] = RSD[M1, p]
    SNV[f, p] = RSNV[M1, f, p]
    AV[f, p] = SNV[f, p] / SD[p]

Where a fiber may be empty (a mask), a tile can leave a running max at -inf; the correction
then reads the running maxima through ``where(x == -inf, 0.0, x)`` so that an all-masked
prefix contributes exactly 0 instead of ``exp(-inf + inf)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import sympy

from einscade.ir import ops
from einscade.ir.cascade import Cascade, Einsum, Iterate, Let, SizeDef, Statement, size_symbol
from einscade.ir.expr import (
    Access,
    Binary,
    Call,
    Expr,
    Name,
    Num,
    Unary,
    accesses,
    conjoin,
)
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope
from einscade.ir.symbolic import SymbolTable, from_sympy, to_sympy
from einscade.passes.analysis.emptiness import fiber_may_be_empty
from einscade.passes.analysis.uses import reads_of
from einscade.passes.base import Note, Pass, PassResult, register
from einscade.passes.naming import fresh_name
from einscade.passes.rank_split import RankSplit, SplitError, flat_coordinate, row_major_axes


class Decline(Exception):
    """The online form does not apply; the message says why."""


class OnlineForm:
    def __init__(self, cascade: Cascade, rank: str, block: int, *, force: bool = False):
        self.cascade = cascade
        self.force = force
        self.scope = Scope(cascade)
        self.rank = rank
        self.block = block
        self.taken = self.scope.taken_names()
        r1 = fresh_name(rank + "1", self.taken)
        r0 = fresh_name(rank + "0", self.taken)
        self.taken |= {size_symbol(r1), size_symbol(r0)}
        self.r1, self.r0 = r1, r0
        self.walking = self.chain()
        self.walk_targets = {s.target for s in self.walking}
        self.reductions = {s.target: s for s in self.walking if s.reduce and rank in s.reduce.ranks}
        self.maps = {s.target: s for s in self.walking if s.target not in self.reductions}
        self.running = {t: "R" + t for t in self.reductions}
        coordinate = flat_coordinate(r1, r0)
        self.split = RankSplit(
            rank, r1, r0, coordinate,
            row_major_axes(self.scope.grids.get(rank, ()), coordinate), frozenset(self.maps),
        )  # fmt: skip
        self.axis_lets: tuple[Let, ...] = ()
        if not self.axes_used_outside():
            self.split, self.axis_lets = self.split.with_axis_lets()
        self.corrections: list[Einsum] = []  # emitted so far; equal factors are shared

    # -- analysis ------------------------------------------------------------------------
    def walks(self, stmt: Einsum) -> bool:
        return self.rank in {self.scope.flat_rank(r) for r in self.scope.iteration_ranks(stmt)}

    def chain(self) -> list[Einsum]:
        """Top-level statements of the reduction chain over the rank, in program order:
        the reductions over it, the walking maps they read, and the walking statements
        that read any of those (a statement that merely walks the rank stays outside)."""
        walking = [s for s in self.cascade.body if isinstance(s, Einsum) and self.walks(s)]
        chain = {s.target for s in walking if s.reduce and self.rank in s.reduce.ranks}
        by_target = {s.target: s for s in walking}
        grown = True
        while grown:
            before = len(chain)
            for target in list(chain):
                chain |= {t for t in reads_of(by_target[target]) if t in by_target}
            chain |= {s.target for s in walking if set(reads_of(s)) & chain}
            grown = len(chain) != before
        return [s for s in walking if s.target in chain]

    def check_structure(self) -> None:
        read_in_walk = {t for s in self.walking for t in reads_of(s)}
        if not self.reductions:
            raise Decline(f"nothing reduces {self.rank!r}")
        if not self.force and not set(self.reductions) & read_in_walk:
            raise Decline(
                f"already one pass over {self.rank!r}: no reduction over it is read while "
                "walking it again"
            )
        for stmt in self.cascade.body:
            outside = isinstance(stmt, Einsum) and stmt not in self.walking
            if outside and set(reads_of(stmt)) & self.walk_targets and stmt.target in read_in_walk:
                raise Decline(
                    f"{stmt.target} is computed from a finished reduction over "
                    f"{self.rank!r} but read while walking it"
                )

    def expand(self, expr: Expr) -> Expr:
        """Inline walking map statements so running reads become visible to sympy."""
        if isinstance(expr, Access) and expr.tensor in self.maps:
            definition = self.maps[expr.tensor]
            if expr.indices == definition.indices:
                return self.expand(definition.value)
            if self.depends_on_running(expr.tensor):
                raise Decline(f"{expr.tensor} is read at other indices than it is defined")
            return expr
        if isinstance(expr, Access):
            return expr
        match expr:
            case Unary(op=op, operand=x):
                return Unary(op, self.expand(x))
            case Binary(op=op, lhs=a, rhs=b):
                return Binary(op, self.expand(a), self.expand(b))
            case Call(fn=fn, args=args):
                return Call(fn, tuple(self.expand(a) for a in args))
        return expr

    def depends_on_running(self, tensor: str) -> bool:
        if tensor in self.reductions:
            return True
        definition = self.maps.get(tensor)
        return definition is not None and any(
            self.depends_on_running(t) for t in reads_of(definition)
        )

    # -- rewriting expressions -----------------------------------------------------------
    def axes_used_outside(self) -> bool:
        """Whether a statement left outside the loop reads a grid axis of the rank (then the
        axes cannot become lets of the loop's ranks)."""
        axes = set(self.scope.grids.get(self.rank, ()))
        outside = [s for s in self.cascade.einsums() if s not in self.walking]
        return any(axes & self.scope.ranks_in(part) for s in outside for part in _parts(s))

    def running_read(self, access: Access, split: RankSplit) -> Expr | None:
        """Inside the loop a finished reduction is read as its running value so far."""
        if access.tensor not in self.reductions:
            return None
        generation = Binary("+", Name(self.r1), Num(1))
        indices = tuple(split.expr(i, self.running_read) for i in access.indices)
        return Access(self.running[access.tensor], (generation, *indices))

    def retile(self, expr: Expr) -> Expr:
        """Rewrite an expression of the walk in tile coordinates."""
        try:
            return self.split.expr(expr, self.running_read)
        except SplitError as error:
            raise Decline(str(error)) from None

    def in_range(self, value: Expr) -> Expr | None:
        """Bound the tail tile explicitly when nothing read carries the tile coordinate."""
        if self.split.reads_inner(value):
            return None
        return Binary("<", self.split.coordinate, Name(size_symbol(self.rank)))

    # -- building ------------------------------------------------------------------------
    def correction(self, stmt: Einsum, guard: bool) -> tuple[Einsum, bool] | None:
        """The factor a running sum is multiplied by when its running inputs move on."""
        table = SymbolTable()
        operand = to_sympy(self.expand(stmt.value), table)
        moving = {
            s: e
            for s, e in table.exprs.items()
            if isinstance(e, Access) and e.tensor in self.reductions
        }
        if not moving:
            return None
        old, new = {}, {}
        for symbol, access in moving.items():
            op = self.reductions[access.tensor].reduce.op  # type: ignore[union-attr]
            if op not in ("max", "min", "sum"):
                raise Decline(f"running {op} cannot be corrected")
            old_read = self.generation_read(access, guard, op, step=0)
            new_read = self.generation_read(access, guard, op, step=1)
            old[symbol] = table.symbol(old_read)
            new[symbol] = table.symbol(new_read)
        raw = operand.subs(new) / operand.subs(old)
        moving_symbols = set(old.values()) | set(new.values())
        ratio = _quick_ratio(raw)
        if ratio.free_symbols - moving_symbols:  # not separable so far: try harder
            ratio = sympy.powsimp(sympy.simplify(raw))
        data = ratio.free_symbols - moving_symbols
        if data:
            raise Decline(
                f"{stmt.target}: the operand is not separable, its correction "
                f"{ratio} depends on {sorted(map(str, data))[0]}"
            )
        value = from_sympy(ratio, table)
        for existing in self.corrections:
            if existing.value == value:
                return existing, False
        first = sorted(moving.values(), key=print_expr)[0]
        name = fresh_name("C" + first.tensor, self.taken)
        made = Einsum(name, (Name(self.r1), *self.correction_ranks(value)), value)
        self.corrections.append(made)
        return made, True

    def generation_read(self, access: Access, guard: bool, op: str, step: int) -> Expr:
        generation: Expr = Name(self.r1)
        if step:
            generation = Binary("+", generation, Num(1))
        read: Expr = Access(self.running[access.tensor], (generation, *access.indices))
        if not guard:
            return read
        # An all-masked prefix leaves max at -inf and sums at 0: read them as finite
        # stand-ins, which is exact because everything they scale is still 0.
        empty = {"max": Num(-math.inf), "min": Num(math.inf), "sum": Num(0)}[op]
        stand_in = Num(1.0) if op == "sum" else Num(0.0)
        return Call("where", (Binary("==", read, empty), stand_in, read))

    def correction_ranks(self, value: Expr) -> list[Name]:
        ranks: list[Name] = []
        for node in accesses(value):
            for index in node.indices[1:]:
                if isinstance(index, Name) and index not in ranks:
                    ranks.append(index)
        return ranks

    def reduction_statements(self, stmt: Einsum) -> tuple[list[Einsum], list[Einsum]]:
        """(init, body statements) replacing one reduction over the walked rank."""
        assert stmt.reduce is not None
        r1 = Name(self.r1)
        lhs = stmt.indices
        op = stmt.reduce.op
        local_ranks = tuple(self.r0 if r == self.rank else r for r in stmt.reduce.ranks)
        value = self.retile(stmt.value)
        predicate = self.retile(stmt.predicate) if stmt.predicate is not None else None
        local_name = fresh_name("L" + stmt.target, self.taken)
        running = self.running[stmt.target]
        local = Einsum(
            local_name, (r1, *lhs), value, replace(stmt.reduce, ranks=local_ranks),
            conjoin(predicate, self.in_range(value)),
        )  # fmt: skip
        init = Einsum(running, (Num(0), *lhs), Num(ops.REDUCTIONS[op]))
        old = Access(running, (r1, *lhs))
        new_index = (Binary("+", r1, Num(1)), *lhs)
        fresh_part = Access(local_name, (r1, *lhs))
        body = [local]
        if op in ("max", "min"):
            if any(self.depends_on_running(t) for t in reads_of(stmt)):
                raise Decline(f"{stmt.target}: a running {op} of running values")
            body.append(Einsum(running, new_index, Call(op, (old, fresh_part))))
            return [init], body
        guard = fiber_may_be_empty(self.cascade, stmt, self.scope)
        found = self.correction(stmt, guard)
        carried: Expr = old
        if found is not None:
            made, is_new = found
            if is_new:
                body.append(made)
            carried = Binary("*", old, Access(made.target, made.indices))
        body.append(Einsum(running, new_index, Binary("+", fresh_part, carried)))
        return [init], body

    def map_statement(self, stmt: Einsum) -> Einsum:
        value = self.retile(stmt.value)
        predicate = self.retile(stmt.predicate) if stmt.predicate is not None else None
        return replace(
            stmt, indices=self.split.indices(stmt.target, stmt.indices), value=value,
            predicate=conjoin(predicate, self.in_range(value)),
        )  # fmt: skip

    def build(self) -> Cascade:
        self.check_structure()
        inits: list[Einsum] = []
        loop: list[Einsum] = []
        for stmt in self.walking:
            if stmt.target in self.reductions:
                init, body = self.reduction_statements(stmt)
                inits += init
                loop += body
            else:
                loop.append(self.map_statement(stmt))
        before, after = self.split_rest()
        block = Iterate(self.r1, tuple(inits + loop))
        return replace(
            self.cascade,
            body=tuple(before + [block] + self.finals(after) + after),
            sizes=self.cascade.sizes + self.tile_sizes(),
            grids=tuple(g for g in self.cascade.grids if g.rank != self.rank),
            lets=self.axis_lets
            + tuple(Let(let.name, self.retile(let.value), let.loc) for let in self.cascade.lets),
        )

    def split_rest(self) -> tuple[list[Statement], list[Statement]]:
        """Statements outside the walk: before the loop unless they read its results."""
        before: list[Statement] = []
        after: list[Statement] = []
        late = set(self.walk_targets)
        for stmt in self.cascade.body:
            if isinstance(stmt, Einsum) and stmt in self.walking:
                continue
            inner = stmt.body if isinstance(stmt, Iterate) else (stmt,)
            if any(set(reads_of(s)) & late for s in inner):
                after.append(stmt)
                late |= {s.target for s in inner}
            else:
                before.append(stmt)
        return before, after

    def finals(self, after: list[Statement]) -> list[Einsum]:
        """``SD[p] = RSD[M1, p]`` for each reduction read after the loop or returned."""
        read_after = {t for stmt in after for s in _einsums(stmt) for t in reads_of(s)}
        needed = read_after | set(self.cascade.outputs)
        last = Name(size_symbol(self.r1))
        return [
            Einsum(t, s.indices, Access(self.running[t], (last, *s.indices)))
            for t, s in self.reductions.items()
            if t in needed
        ]

    def tile_sizes(self) -> tuple[SizeDef, ...]:
        r0, r1 = size_symbol(self.r0), size_symbol(self.r1)
        extent = Name(size_symbol(self.rank))
        count = Binary("//", Binary("-", Binary("+", extent, Name(r0)), Num(1)), Name(r0))
        return (SizeDef(r0, Num(self.block)), SizeDef(r1, count))


def _quick_ratio(ratio: sympy.Expr) -> sympy.Expr:
    """Combine exponentials and cancel: milliseconds, where sympy.simplify takes ~0.5 s."""
    return sympy.powsimp(sympy.cancel(sympy.powsimp(ratio, combine="exp")), combine="exp")


def _parts(stmt: Einsum) -> list[Expr]:
    return [stmt.value, *stmt.indices] + ([stmt.predicate] if stmt.predicate is not None else [])


def _einsums(stmt: Statement) -> tuple[Einsum, ...]:
    return stmt.body if isinstance(stmt, Iterate) else (stmt,)


def online_ranks(cascade: Cascade) -> list[str]:
    """Ranks that some reduction is taken over and then read while walking them again."""
    scope = Scope(cascade)
    found: list[str] = []
    for stmt in cascade.body:
        if not isinstance(stmt, Einsum) or stmt.reduce is None:
            continue
        for rank in stmt.reduce.ranks:
            if rank in found:
                continue
            readers = [
                s for s in cascade.einsums()
                if stmt.target in reads_of(s)
                and rank in {scope.flat_rank(r) for r in scope.iteration_ranks(s)}
            ]  # fmt: skip
            if readers:
                found.append(rank)
    return found


@register
@dataclass(frozen=True)
class OnlineSoftmax(Pass):
    """Turn every multi-pass reduction chain into a 1-pass loop over tiles of ``block``."""

    name = "online-softmax"
    rank: str = ""
    block: int = 64

    def run(self, cascade: Cascade) -> PassResult:
        notes: list[Note] = []
        tried: set[str] = set()
        while True:
            ranks = [self.rank] if self.rank else online_ranks(cascade)
            pending = [r for r in ranks if r not in tried]
            if not pending:
                break
            rank = pending[0]
            tried.add(rank)
            try:
                cascade = OnlineForm(cascade, rank, self.block).build()
            except Decline as why:
                notes.append(Note("decline", f"over {rank!r}: {why}"))
                continue
            notes.append(Note("rewrite", f"1-pass loop over tiles of {rank!r}"))
        if not tried:
            notes.append(Note("decline", "no reduction is read while walking its rank again"))
        return PassResult(cascade, tuple(notes))
