"""associate: reorder a sum of a sum of products so that the larger intermediate disappears.

A sum over ``r`` whose operand is a product in which one factor is itself a sum over ``s`` of
a product is one multilinear contraction, ``sum_{r, s} prod(factors)``, and a contraction may
be bracketed either way (sums commute, products distribute over sums). The pass swaps the
two sums: first sum over ``r`` the factors that vary along ``r`` (a new intermediate), then
sum over ``s`` the remaining factors times it. It does so only where sympy shows that the
new intermediate is asymptotically smaller than the one it replaces when the *long* ranks
(sequence lengths; option ``long``, ``:``-separated, default ``p:m``) grow and the others
stay bounded, and only if the work does not grow in order. Nothing names attention: the
same algebra serves any chain of sums of products.

It declines, and says why, when the inner sum's result does not reach the outer sum as a
plain factor: a mask on the chain (the masked scores must exist as a matrix), a non-linear
map (``S passes through sigmoid in A``), a max, a division by it, a second use that keeps it
alive. Every sum that reads the inner result (directly or through product maps, which are
inlined) is rewritten, so the inner tensor goes away.

Before (linear attention, quadratic form: the m x p scores ``S``)::

    FQ[b, h, p, e] = elu(Q[b, h, p, e]) + 1
    FK[b, h, m, e] = elu(K[b, h, m, e]) + 1
    S[b, h, m, p] = FQ[b, h, p, e] * FK[b, h, m, e] :: sum(e)
    SD[b, h, p] = S[b, h, m, p] :: sum(m)
    SNV[b, h, p, f] = S[b, h, m, p] * V[b, h, m, f] :: sum(m)
    AV[b, h, p, f] = SNV[b, h, p, f] / SD[b, h, p]

After (``phi(Q) (phi(K)^T V)``: intermediates of e x f and e)::

    FQ[b, h, p, e] = elu(Q[b, h, p, e]) + 1
    FK[b, h, m, e] = elu(K[b, h, m, e]) + 1
    ZFK[b, h, e] = FK[b, h, m, e] :: sum(m)
    SD[b, h, p] = FQ[b, h, p, e] * ZFK[b, h, e] :: sum(e)
    FKV[b, h, e, f] = FK[b, h, m, e] * V[b, h, m, f] :: sum(m)
    SNV[b, h, p, f] = FQ[b, h, p, e] * FKV[b, h, e, f] :: sum(e)
    AV[b, h, p, f] = SNV[b, h, p, f] / SD[b, h, p]

A new intermediate whose every read of rank ``h`` is one index expression ``h // G`` at a
dimension declared ``hk`` is indexed by ``hk`` instead (grouped-query attention computes
``FKV`` once per KV head and reads it at ``FKV[b, h // G, e, f]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import sympy

from einscade.ir.cascade import Cascade, Einsum, Reduce, SizeDef, Statement, size_symbol
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary, map_expr, names, walk
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope
from einscade.passes.analysis.emptiness import fiber_may_be_empty
from einscade.passes.analysis.uses import reads_of
from einscade.passes.base import Note, Pass, PassResult, register
from einscade.passes.defer_div import _Factors, join_product, split_product
from einscade.passes.naming import fresh_name


class Decline(Exception):
    """This chain cannot be reassociated; the message says why."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One outer sum rewritten as (new intermediate, outer sum over the inner ranks)."""

    outer: str
    statements: tuple[Einsum, Einsum]
    note: str


def _ranks_text(ranks: tuple[str, ...]) -> str:
    return ", ".join(ranks)


def operation(expr: Expr) -> str:
    """The operator or function at the top of ``expr`` (how a factor transforms its reads)."""
    match expr:
        case Call(fn=fn):
            return fn
        case Binary(op=op) | Unary(op=op):
            return op
    return "an index"


class _Costs:
    """Sizes as sympy symbols; long ranks all grow as ``n``, the others stay bounded."""

    def __init__(self, cascade: Cascade, scope: Scope, long: frozenset[str]):
        self.scope = scope
        self.long = long
        self.n = sympy.Symbol("n", positive=True)
        self.fixed = {s.name: s.value.value for s in cascade.sizes if isinstance(s.value, Num)}
        self.aliases: dict[str, str] = {}  # size of a renamed rank -> size of the original

    def size(self, rank: str) -> sympy.Expr:
        symbol = size_symbol(rank)
        symbol = self.aliases.get(symbol, symbol)
        if symbol in self.fixed:
            return sympy.Integer(self.fixed[symbol])
        return sympy.Symbol(symbol, positive=True)

    def volume(self, ranks: tuple[str, ...] | set[str]) -> sympy.Expr:
        return sympy.Mul(*(self.size(r) for r in sorted(ranks)))

    def grows(self, volume: sympy.Expr) -> sympy.Expr:
        long_sizes = {
            self.size(r): self.n
            for r in self.scope.ranks
            if r in self.long or self.scope.flat_rank(r) in self.long
        }
        return volume.subs(long_sizes)

    def limit(self, numerator: sympy.Expr, denominator: sympy.Expr) -> sympy.Expr:
        """``lim numerator / denominator`` as the long sizes grow."""
        ratio = sympy.simplify(self.grows(numerator) / self.grows(denominator))
        return sympy.limit(ratio, self.n, sympy.oo)

    def smaller(self, new: sympy.Expr, old: sympy.Expr) -> bool:
        """Whether ``new`` is smaller than ``old`` for every large enough long size."""
        ratio = self.limit(old, new)
        return ratio == sympy.oo or (ratio.is_number and bool(ratio > 1))

    def not_larger_order(self, new: sympy.Expr, old: sympy.Expr) -> bool:
        return self.limit(new, old) != sympy.oo


class _Associator:
    def __init__(self, cascade: Cascade, long: frozenset[str]):
        self.cascade = cascade
        self.long = long
        self.notes: list[Note] = []

    # -- facts about the current cascade ---------------------------------------------------
    def refresh(self) -> None:
        self.scope = Scope(self.cascade)
        self.costs = _Costs(self.cascade, self.scope, self.long)
        self.top = {s.target: s for s in self.cascade.body if isinstance(s, Einsum)}
        self.readers: dict[str, list[Einsum]] = {}
        for stmt in self.cascade.einsums():
            for tensor in dict.fromkeys(reads_of(stmt)):
                self.readers.setdefault(tensor, []).append(stmt)
        self.taken = self.scope.taken_names()
        self.renamed: set[str] = set()
        self.new_sizes: list[SizeDef] = []

    def ranks(self, expr: Expr) -> set[str]:
        """Ranks ``expr`` reads (grid axes as their grid), renamed ranks included."""
        return {self.scope.flat_rank(r) for r in self.scope.ranks_in(expr)} | (
            names(expr) & self.renamed
        )

    def ranks_in_order(self, expr: Expr) -> list[str]:
        known = self.scope.ranks | self.renamed
        ordered: list[str] = []
        for node in walk(self.scope.expand(expr)):
            if isinstance(node, Name) and node.id in known and node.id not in ordered:
                ordered.append(node.id)
        return ordered

    # -- the route from an inner sum to the sums that read it --------------------------------
    def route(self, inner: Einsum) -> tuple[list[Einsum], list[str], set[str], list[str]]:
        """(outer sums reached cleanly, every sum reached, the product maps between, obstacles).

        Walks every reader of the inner result through product maps; a reader that uses it
        any other way is an obstacle, and the walk goes on past it to see whether a sum lies
        behind (then that obstacle is the reason to decline)."""
        outers: list[Einsum] = []
        reached: list[str] = []
        maps: set[str] = set()
        obstacles: list[str] = []
        frontier = [(inner.target, True)]
        seen: set[str] = set()
        while frontier:
            tensor, clean = frontier.pop(0)
            if tensor in self.cascade.outputs and clean:
                obstacles.append(f"{tensor} is an output")
            for reader in self.readers.get(tensor, []):
                obstacle = self.obstacle(reader, tensor)
                if clean and obstacle is not None:
                    obstacles.append(obstacle)
                if reader.reduce is not None and reader.reduce.op == "sum":
                    reached += [reader.target] if reader.target not in reached else []
                    if clean and obstacle is None and reader not in outers:
                        outers.append(reader)
                elif reader.reduce is None and reader.target not in seen:
                    seen.add(reader.target)
                    if clean and obstacle is None:
                        maps.add(reader.target)
                    frontier.append((reader.target, clean and obstacle is None))
        return outers, reached, maps, obstacles

    def obstacle(self, reader: Einsum, tensor: str) -> str | None:
        """Why ``reader`` does not use ``tensor`` as one plain factor of a product, or None."""
        if self.scope.iterate_rank(reader) is not None:
            return f"{tensor} is read inside 'iterate {self.scope.iterate_rank(reader)}'"
        if reader.predicate is not None:
            return f"{reader.target} masks {tensor} (if {print_expr(reader.predicate)})"
        if reader.reduce is not None and reader.reduce.op != "sum":
            return f"{tensor} is reduced by {reader.reduce.op} in {reader.target}"
        factors = split_product(reader.value)
        if any(_is_read_of(f, tensor) for f in factors.denominator):
            return f"{tensor} divides in {reader.target}"
        buried = [
            f
            for f in factors.numerator + factors.denominator
            if not _is_read_of(f, tensor) and any(a.tensor == tensor for a in _reads(f))
        ]
        if buried:
            return f"{tensor} passes through {operation(buried[0])} in {reader.target}"
        plain = sum(1 for f in factors.numerator if _is_read_of(f, tensor))
        if plain > 1:
            return f"{tensor} appears {plain} times in the product of {reader.target}"
        return None

    # -- one outer sum -------------------------------------------------------------------
    def expand(self, expr: Expr, maps: set[str]) -> _Factors:
        """Factors of a product, with the product maps on the route inlined."""
        factors = split_product(expr)
        numerator: list[Expr] = []
        denominator: list[Expr] = []
        for side, own, other in ((factors.numerator, numerator, denominator),
                                 (factors.denominator, denominator, numerator)):  # fmt: skip
            for factor in side:
                if isinstance(factor, Access) and factor.tensor in maps:
                    value, _ = self.instantiate(factor, set())
                    inner = self.expand(value, maps)
                    own.extend(inner.numerator)
                    other.extend(inner.denominator)
                else:
                    own.append(factor)
        return _Factors(tuple(numerator), tuple(denominator))

    def instantiate(self, read: Access, avoid: set[str]) -> tuple[Expr, tuple[str, ...]]:
        """The value of a top-level statement at the indices ``read`` uses, and its reduced
        ranks, renamed to fresh names where they clash with ``avoid``."""
        definition = self.top[read.tensor]
        bindings: dict[str, Expr] = {}
        for lhs, index in zip(definition.indices, read.indices, strict=True):
            assert isinstance(lhs, Name)
            if not isinstance(index, Name):
                raise Decline(f"{read.tensor} is read at {print_expr(read)}, not at plain ranks")
            bindings[lhs.id] = index
        reduced: list[str] = []
        for rank in definition.reduce.ranks if definition.reduce else ():
            name = self.rename(rank) if rank in avoid else rank
            bindings[rank] = Name(name)
            reduced.append(name)
        return _rename(definition.value, bindings), tuple(reduced)

    def rename(self, rank: str) -> str:
        """A fresh rank for ``rank`` (and its size, defined equal to the original's)."""
        name = fresh_name(rank, self.taken)
        while size_symbol(name) in self.taken:
            name = fresh_name(rank, self.taken)
        self.taken.add(size_symbol(name))
        self.renamed.add(name)
        self.new_sizes.append(SizeDef(size_symbol(name), Name(size_symbol(rank))))
        self.costs.aliases[size_symbol(name)] = size_symbol(rank)
        return name

    def plan(self, outer: Einsum, inner: Einsum, maps: set[str]) -> _Plan:
        assert outer.reduce is not None
        if fiber_may_be_empty(self.cascade, outer, self.scope):
            raise Decline(f"{outer.target} may sum over empty fibers (a mask or shifted read)")
        factors = self.expand(outer.value, maps)
        reads = [f for f in factors.numerator if _is_read_of(f, inner.target)]
        if len(reads) != 1:
            raise Decline(f"{inner.target} appears {len(reads)} times in {outer.target}'s product")
        (read,) = reads
        used = self.ranks(outer.value) | set(outer.reduce.ranks)
        used |= {i.id for i in outer.indices if isinstance(i, Name)}
        value, inner_reduced = self.instantiate(read, used)
        substituted = split_product(value)
        numerator: list[Expr] = []
        for factor in factors.numerator:
            numerator.extend(substituted.numerator if factor is read else (factor,))
        every = _Factors(tuple(numerator), factors.denominator + substituted.denominator)
        return self.swap(outer, read, every, inner_reduced)

    def swap(
        self, outer: Einsum, read: Access, every: _Factors, inner_reduced: tuple[str, ...]
    ) -> _Plan:
        """Sum over the outer ranks first: the factors that vary along them become the new
        intermediate; the rest is summed over the inner ranks."""
        assert outer.reduce is not None
        outer_ranks = set(outer.reduce.ranks)
        first, rest = partition(every, lambda f: bool(self.ranks(f) & outer_ranks))
        rest_ranks = self.ranks(join_product(rest))
        late = tuple(r for r in inner_reduced if r in rest_ranks)
        early = tuple(outer.reduce.ranks) + tuple(r for r in inner_reduced if r not in late)
        first_value = join_product(first)
        kept = [r for r in self.ranks_in_order(first_value) if r not in early]
        first_value, lhs, read_back = self.collapse(first_value, kept)
        name = self.name_for(first)
        made = Einsum(name, tuple(Name(r) for r in lhs), first_value, Reduce("sum", early))
        partial = Access(name, read_back)
        value = join_product(_Factors(rest.numerator + (partial,), rest.denominator))
        reduce = Reduce("sum", late) if late else None
        final = Einsum(outer.target, outer.indices, value, reduce, None, outer.loc)
        old_space = {i.id for i in read.indices if isinstance(i, Name)} | set(inner_reduced)
        note = self.judge(outer, read, old_space, made, final)
        return _Plan(outer.target, (made, final), note)

    def collapse(self, value: Expr, kept: list[str]) -> tuple[Expr, list[str], tuple[Expr, ...]]:
        """Index the intermediate by a factor's own dimension where a kept rank is only ever
        read through one expression there (``h // G`` at a dimension declared ``hk``).

        Returns the rewritten value, its kept ranks, and the indices to read it back with."""
        lhs: list[str] = []
        read_back: list[Expr] = []
        for rank in kept:
            found = self.sole_index(value, rank)
            if found is None:
                lhs.append(rank)
                read_back.append(Name(rank))
                continue
            expression, dim_rank = found
            value = map_expr(value, lambda n, x=expression, d=dim_rank: Name(d) if n == x else None)
            lhs.append(dim_rank)
            read_back.append(expression)
        return value, lhs, tuple(read_back)

    def sole_index(self, value: Expr, rank: str) -> tuple[Expr, str] | None:
        """(X, d) if every use of ``rank`` in ``value`` is the whole index X of a dimension
        declared with rank d, the same X and d each time, and d is not used otherwise."""
        uses: set[tuple[Expr, str]] = set()
        for access in _reads(value):
            declared = self.scope.tensors[access.tensor].ranks
            for dim_rank, index in zip(declared, access.indices, strict=True):
                if rank in self.scope.ranks_in(index):
                    uses.add((index, dim_rank))
        if len(uses) != 1:
            return None
        ((expression, dim_rank),) = uses
        bare = sum(1 for n in walk(value) if n == Name(rank))
        per_use = sum(1 for n in walk(expression) if n == Name(rank))
        occurrences = sum(1 for a in _reads(value) for i in a.indices if i == expression)
        if isinstance(expression, Name) or bare != per_use * occurrences:
            return None
        if dim_rank in self.scope.ranks_in(value) or dim_rank in self.scope.axis_of:
            return None
        return expression, dim_rank

    def name_for(self, factors: _Factors) -> str:
        tensors = [a.tensor for f in factors.numerator + factors.denominator for a in _reads(f)]
        stem = "".join(dict.fromkeys(tensors)) or "T"
        if len(factors.numerator) + len(factors.denominator) == 1:
            stem = "Z" + stem  # a plain sum of one tensor: name it as that tensor's sum
        return fresh_name(stem, self.taken)

    def judge(
        self, outer: Einsum, read: Access, old_space: set[str], made: Einsum, final: Einsum
    ) -> str:
        """Accept the new order only if it shrinks the intermediate and not the work's order."""
        assert outer.reduce is not None
        costs = self.costs
        old_lhs = tuple(i.id for i in read.indices if isinstance(i, Name))
        new_lhs = tuple(i.id for i in made.indices if isinstance(i, Name))
        old_size, new_size = costs.volume(old_lhs), costs.volume(new_lhs)
        old_work = costs.volume(old_space) + costs.volume(_space(outer))
        new_work = costs.volume(_space(made)) + costs.volume(_space(final))
        sums = _ranks_text(outer.reduce.ranks)
        shape_old = f"{read.tensor}[{_ranks_text(old_lhs)}] ({old_size})"
        shape_new = f"{made.target}[{_ranks_text(new_lhs)}] ({new_size})"
        if not costs.smaller(new_size, old_size):
            raise Decline(
                f"{outer.target}: sum({sums}) first would not shrink the intermediate: "
                f"{shape_new} vs {shape_old}"
            )
        if not costs.not_larger_order(new_work, old_work):
            raise Decline(f"{outer.target}: sum({sums}) first grows the work: {new_work}")
        return (
            f"{outer.target}: sum({sums}) first, {shape_new} replaces {shape_old}; "
            f"work {old_work} -> {new_work}"
        )

    # -- driving ---------------------------------------------------------------------------
    def attempt(self, inner: Einsum) -> None:
        outers, reached, maps, obstacles = self.route(inner)
        if not reached:
            return  # no sum of this sum: nothing to reassociate
        label = f"{inner.target} -> {', '.join(reached)}"
        try:
            if obstacles:
                raise Decline(obstacles[0])
            if inner.predicate is not None:
                raise Decline(f"{inner.target} is masked (if {print_expr(inner.predicate)})")
            if fiber_may_be_empty(self.cascade, inner, self.scope):
                raise Decline(f"{inner.target} may sum over empty fibers (a mask or shifted read)")
            plans = [self.plan(outer, inner, maps) for outer in outers]
        except Decline as why:
            self.notes.append(Note("decline", f"{label}: {why}"))
            return
        self.apply(inner, maps, plans)

    def apply(self, inner: Einsum, maps: set[str], plans: list[_Plan]) -> None:
        by_outer = {p.outer: p for p in plans}
        gone = {inner.target} | maps
        body: list[Statement] = []
        for stmt in self.cascade.body:
            if isinstance(stmt, Einsum) and stmt.target in by_outer:
                body.extend(by_outer[stmt.target].statements)
            elif not (isinstance(stmt, Einsum) and stmt.target in gone):
                body.append(stmt)
        sizes = self.cascade.sizes + tuple(self.new_sizes)
        self.cascade = replace(self.cascade, body=tuple(body), sizes=sizes)
        self.notes.extend(Note("rewrite", p.note) for p in plans)

    def run(self) -> Cascade:
        candidates = [
            s.target
            for s in self.cascade.body
            if isinstance(s, Einsum) and s.reduce is not None and s.reduce.op == "sum"
        ]
        for name in candidates:
            self.refresh()
            if name in self.top:
                self.attempt(self.top[name])
        return self.cascade


def _is_read_of(factor: Expr, tensor: str) -> bool:
    return isinstance(factor, Access) and factor.tensor == tensor


def partition(factors: _Factors, test: Callable[[Expr], bool]) -> tuple[_Factors, _Factors]:
    """(factors passing ``test``, the others), numerators and denominators kept apart."""
    yes = _Factors(
        tuple(f for f in factors.numerator if test(f)),
        tuple(f for f in factors.denominator if test(f)),
    )
    no = _Factors(
        tuple(f for f in factors.numerator if not test(f)),
        tuple(f for f in factors.denominator if not test(f)),
    )
    return yes, no


def _space(stmt: Einsum) -> set[str]:
    """The ranks of a top-level statement's iteration space: kept and reduced."""
    kept = {i.id for i in stmt.indices if isinstance(i, Name)}
    return kept | set(stmt.reduce.ranks if stmt.reduce else ())


def _reads(expr: Expr) -> list[Access]:
    return [n for n in walk(expr) if isinstance(n, Access)]


def _rename(expr: Expr, bindings: dict[str, Expr]) -> Expr:
    return map_expr(expr, lambda n: bindings.get(n.id) if isinstance(n, Name) else None)


@register
@dataclass(frozen=True)
class Associate(Pass):
    """Reassociate sums of sums of products to the order with the smaller intermediate."""

    name = "associate"
    long: str = "p:m"

    def run(self, cascade: Cascade) -> PassResult:
        long = frozenset(r for r in self.long.split(":") if r)
        associator = _Associator(cascade, long)
        result = associator.run()
        return PassResult(result, tuple(associator.notes))
