"""What each rank and statement of a fused, tiled cascade becomes in a Triton kernel.

The input is the output of ``defer-div,online-softmax,tile{p=P0,m=M0},dce``: one
``iterate m1`` loop over key tiles, query tiles ``p = (p1, p0)`` and an *untile* statement
per output (``AV[b, h, p, f] = AVT[b, h, p // P0, p % P0, f]``). Roles are read off the
statements, never off rank names:

- the loop rank (``m1``) is the rank of the ``iterate`` block: the kernel's ``for`` loop;
- the tile and row ranks (``p1``, ``p0``) are the two ranks the untiled output's source
  carries in place of the query rank (``p``): ``program_id(0)`` and the block's rows;
- the key rank (``m0``) is the rank the loop's running reductions are taken over: columns;
- batch ranks (``b``, ``h``) are kept by every statement of the loop: ``program_id(1)``;
- every other rank (``e``, ``f``) is a padded head axis ``tl.arange(0, E_PAD)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from einscade.codegen.bind import eval_scalar
from einscade.ir.cascade import Cascade, Einsum, Iterate, size_symbol
from einscade.ir.errors import BindError, EinscadeError
from einscade.ir.expr import Access, Binary, Call, Expr, Name, accesses, substitute
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope, generation_index


class KernelError(EinscadeError):
    """The cascade cannot be lowered to a Triton kernel (the message says where and why)."""


@dataclass(frozen=True)
class Store:
    """An untile statement: the output read back from its tiled source through an index map.

    ``coordinate`` is the query position as a function of the tile and row ranks, taken from
    the reads of query-side inputs (``Q[b, h, p1 * P0 + p0, e]``)."""

    stmt: Einsum
    output: str
    source: str
    query: str
    tile_index: Expr
    row_index: Expr
    coordinate: Expr


@dataclass(frozen=True)
class RunningLse:
    """A running max and the running sum of ``exp(x - max)``: their log-sum-exp is kept."""

    maximum: str
    total: str


@dataclass(frozen=True)
class Carried:
    """An iterative tensor: generation 0 before the loop, generation ``m1 + 1`` inside it."""

    name: str
    init: Einsum
    update: Einsum


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class KernelPlan:
    """The roles of ranks and the partition of statements of one tiled cascade."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade
        self.scope = Scope(cascade)
        self.loop = self._loop()
        self.loop_rank = self.loop.rank
        self.before, self.after = self._top_level()
        self.carried = self._carried()
        self.inits = tuple(c.init for c in self.carried.values())
        self.body = tuple(s for s in self.loop.body if s not in self.inits)
        self.stores = self._stores()
        self.after = tuple(s for s in self.after if s not in {st.stmt for st in self.stores})
        self.tile_rank, self.row_rank = self._tile_ranks()
        self.key_rank = self._key_rank()
        self.batch = self._batch()
        self.axes = self._axes()
        self.padded = tuple(a for a in self.axes if a not in (self.row_rank, self.key_rank))
        self.constants = self._constants()
        self._check_blocks()

    # -- statements ----------------------------------------------------------------------
    def _loop(self) -> Iterate:
        loops = [s for s in self.cascade.body if isinstance(s, Iterate)]
        if len(loops) != 1:
            raise KernelError(
                f"@{self.cascade.name}: a kernel needs exactly one 'iterate' loop over key "
                f"tiles, found {len(loops)} (run online-softmax and tile first)"
            )
        return loops[0]

    def _top_level(self) -> tuple[tuple[Einsum, ...], tuple[Einsum, ...]]:
        index = self.cascade.body.index(self.loop)
        before = tuple(s for s in self.cascade.body[:index] if isinstance(s, Einsum))
        after = tuple(s for s in self.cascade.body[index + 1 :] if isinstance(s, Einsum))
        return before, after

    def _carried(self) -> dict[str, Carried]:
        inits: dict[str, Einsum] = {}
        updates: dict[str, Einsum] = {}
        for stmt in self.loop.body:
            kinds = {generation_index(i, self.loop_rank) for i in stmt.indices} - {None}
            if "init" in kinds:
                inits[stmt.target] = stmt
            elif "next" in kinds:
                updates[stmt.target] = stmt
        return {t: Carried(t, inits[t], updates[t]) for t in inits if t in updates}

    def _stores(self) -> tuple[Store, ...]:
        defs = {s.target: s for s in self.after}
        stores = []
        for output in self.cascade.outputs:
            stmt = defs.get(output)
            if stmt is None:
                raise KernelError(
                    f"output {output!r} is not defined after the key loop; a kernel writes "
                    "outputs through the untile statement of the tile pass"
                )
            stores.append(self._store(stmt))
        return tuple(stores)

    def _store(self, stmt: Einsum) -> Store:
        value = stmt.value
        untiled = f"{stmt.target}[...] must read its query-tiled source (run tile{{p=...}})"
        if not isinstance(value, Access) or value.tensor not in self.scope.tensors:
            raise KernelError(untiled)
        lhs = [i.id for i in stmt.indices if isinstance(i, Name)]
        source_ranks = self.scope.tensors[value.tensor].ranks
        extra = [r for r in source_ranks if r not in lhs]
        missing = [r for r in lhs if r not in source_ranks]
        if len(extra) != 2 or len(missing) != 1 or stmt.reduce or stmt.predicate:
            raise KernelError(untiled)
        for rank, index in zip(source_ranks, value.indices, strict=True):
            if rank not in extra and index != Name(rank):
                raise KernelError(f"{stmt.target}: the untile read must keep rank {rank!r}")
        tile_index = value.indices[source_ranks.index(extra[0])]
        row_index = value.indices[source_ranks.index(extra[1])]
        query = missing[0]
        coordinate = self._query_coordinate(query)
        return Store(stmt, stmt.target, value.tensor, query, tile_index, row_index, coordinate)

    def _query_coordinate(self, query: str) -> Expr:
        """The query position in tile coordinates, as the inputs read it."""
        found: list[Expr] = []
        for stmt in self.cascade.einsums():
            parts = [stmt.value] + ([stmt.predicate] if stmt.predicate is not None else [])
            for node in (a for part in parts for a in accesses(part)):
                decl = self.cascade.input(node.tensor)
                if decl is None:
                    continue
                found += [i for r, i in zip(decl.ranks, node.indices, strict=True) if r == query]
        if not found:
            raise KernelError(
                f"no input is read at the query rank {query!r}: cannot tell which query "
                "position a row of a tile holds"
            )
        first = self.scope.expand(found[0])
        for other in found[1:]:
            if self.scope.expand(other) != first:
                raise KernelError(
                    f"inputs read the query rank {query!r} at different positions: "
                    f"{print_expr(found[0])} and {print_expr(other)}"
                )
        return found[0]

    # -- ranks ---------------------------------------------------------------------------
    def _tile_ranks(self) -> tuple[str, str]:
        pairs = set()
        for store in self.stores:
            source = self.scope.tensors[store.source].ranks
            lhs = {i.id for i in store.stmt.indices if isinstance(i, Name)}
            pairs.add(tuple(r for r in source if r not in lhs))
        if len(pairs) != 1:
            raise KernelError(f"outputs are tiled differently: {sorted(pairs)}")
        tile, row = pairs.pop()
        return tile, row

    def _key_rank(self) -> str:
        update_reads = {a.tensor for c in self.carried.values() for a in accesses(c.update.value)}
        ranks = {
            r
            for s in self.body
            if s.reduce is not None and s.target in update_reads
            for r in s.reduce.ranks
        }
        if len(ranks) != 1:
            found = ", ".join(sorted(ranks)) or "none"
            raise KernelError(
                f"'iterate {self.loop_rank}': expected the running values to reduce one key "
                f"rank, found {found}"
            )
        return ranks.pop()

    def ranks_of(self, stmt: Einsum) -> tuple[str, ...]:
        """The statement's iteration ranks (generation indices count as the loop rank)."""
        return self.scope.iteration_ranks(stmt)

    def _batch(self) -> tuple[str, ...]:
        common = set(self.ranks_of(self.loop.body[0]))
        for stmt in self.loop.body[1:]:
            common &= set(self.ranks_of(stmt))
        common -= {self.loop_rank, self.tile_rank, self.row_rank, self.key_rank}
        output_ranks = [i.id for i in self.stores[0].stmt.indices if isinstance(i, Name)]
        for rank in sorted(common):
            if rank not in output_ranks:
                raise KernelError(f"batch rank {rank!r} is not a rank of the output")
        return tuple(r for r in output_ranks if r in common)

    def _axes(self) -> tuple[str, ...]:
        scalar = {self.loop_rank, self.tile_rank, *self.batch}
        found = [self.row_rank, self.key_rank]
        statements = self.before + self.loop.body + self.after
        for stmt in statements:
            found += [r for r in self.ranks_of(stmt) if r not in scalar and r not in found]
        for rank in found:
            if rank in self.scope.axis_of:
                raise KernelError(
                    f"grid axis {rank!r} is iterated directly; kernels need it as a let of "
                    "the tile ranks (the tile pass does this)"
                )
        return tuple(found)

    # -- sizes ---------------------------------------------------------------------------
    def _constants(self) -> dict[str, int]:
        """Sizes fixed by the cascade itself (``size P0 = 64``): constexpr in the kernel."""
        env: dict[str, int | float] = {}
        for size in self.cascade.sizes:
            try:
                env[size.name] = eval_scalar(size.value, env)
            except BindError:
                continue
        return {k: int(v) for k, v in env.items()}

    def block(self, rank: str) -> str:
        """The size symbol of a block axis: the arange's extent (P0, M0) or its pad."""
        symbol = size_symbol(rank)
        return symbol if rank in (self.row_rank, self.key_rank) else symbol + "_PAD"

    def _check_blocks(self) -> None:
        for rank in (self.row_rank, self.key_rank):
            symbol = size_symbol(rank)
            value = self.constants.get(symbol)
            if value is None:
                raise KernelError(f"block size {symbol} must be a constant (size {symbol} = ...)")
            if not _is_pow2(value):
                raise KernelError(
                    f"block size {symbol} = {value} must be a power of two (Triton blocks)"
                )
        for rank in self.padded:
            if size_symbol(rank) in self.constants:
                continue
            if not any(rank in d.ranks for d in self.cascade.inputs):
                raise KernelError(f"head axis {rank!r} takes its size from no input")

    def block_size(self, rank: str) -> int:
        return self.constants[size_symbol(rank)]

    # -- derived facts -------------------------------------------------------------------
    @cached_property
    def lookups(self) -> frozenset[str]:
        """Inputs read inside predicates: integer lookup tables (``doc[b, m]``)."""
        found = set()
        for stmt in self.cascade.einsums():
            if stmt.predicate is not None:
                found |= {a.tensor for a in accesses(stmt.predicate)}
        values = {a.tensor for s in self.cascade.einsums() for a in accesses(s.value)}
        both = found & values & {d.name for d in self.cascade.inputs}
        if both:
            name = sorted(both)[0]
            raise KernelError(f"input {name!r} is read both as a value and as a mask lookup")
        return frozenset(found)

    @cached_property
    def lse(self) -> RunningLse | None:
        """The running max and sum of a softmax, if the loop carries them."""
        defs = {s.target: s for s in self.loop.body}
        maxima = [c.name for c in self.carried.values() if self._is_running_max(c, defs)]
        for maximum in maxima:
            rows = self.block_axes(defs[maximum])
            for carried in self.carried.values():
                same_rows = self.block_axes(carried.init) == rows
                if same_rows and self._sums_exp_of(carried, maximum, defs):
                    return RunningLse(maximum, carried.name)
        return None

    def _is_running_max(self, carried: Carried, defs: dict[str, Einsum]) -> bool:
        value = carried.update.value
        if not (isinstance(value, Call) and value.fn == "max"):
            return False
        names = [a.tensor for a in value.args if isinstance(a, Access)]
        others = [defs.get(n) for n in names if n != carried.name]
        return len(others) == 1 and others[0] is not None and _reduces(others[0], "max")

    def _sums_exp_of(self, carried: Carried, maximum: str, defs: dict[str, Einsum]) -> bool:
        """Whether ``carried`` sums a local sum of ``exp(x - maximum)`` over key tiles."""
        for part in _sum_terms(carried.update.value):
            local = defs.get(part.tensor) if isinstance(part, Access) else None
            if local is None or not _reduces(local, "sum") or not isinstance(local.value, Access):
                continue
            term = defs.get(local.value.tensor)
            if term is not None and _is_exp_minus(term.value, maximum):
                return True
        return False

    def block_axes(self, stmt: Einsum) -> tuple[str, ...]:
        """The block axes a statement's result keeps, in canonical order."""
        kept = set(self.ranks_of(stmt))
        if stmt.reduce is not None:
            kept -= set(stmt.reduce.ranks)
        return tuple(a for a in self.axes if a in kept)

    def expr_axes(self, expr: Expr) -> tuple[str, ...]:
        """The block axes an expression varies along (lets expanded), canonical order."""
        ranks = self.scope.ranks_in(expr)
        return tuple(a for a in self.axes if a in ranks)

    def loop_dependent(self, expr: Expr) -> bool:
        """Whether an expression reads the loop rank or a tensor the loop defines."""
        if self.loop_rank in self.scope.ranks_in(expr):
            return True
        defined = {s.target for s in self.loop.body}
        return any(a.tensor in defined for a in accesses(self.scope.expand(expr)))

    def substitute_query(self, expr: Expr, store: Store) -> Expr:
        """``expr`` with the query rank replaced by its tile coordinate."""
        return substitute(expr, {store.query: store.coordinate})


def _reduces(stmt: Einsum, op: str) -> bool:
    return stmt.reduce is not None and stmt.reduce.op == op


def _is_exp_minus(expr: Expr, tensor: str) -> bool:
    """``exp(x - tensor[...])``."""
    if not (isinstance(expr, Call) and expr.fn == "exp" and isinstance(expr.args[0], Binary)):
        return False
    shift = expr.args[0]
    return shift.op == "-" and isinstance(shift.rhs, Access) and shift.rhs.tensor == tensor


def _sum_terms(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "+":
        return _sum_terms(expr.lhs) + _sum_terms(expr.rhs)
    return [expr]
