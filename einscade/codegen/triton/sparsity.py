"""When a kernel's key loop may skip and reorder key tiles, and what a full tile drops.

A block-sparse schedule (``schedule.py``) visits only the key tiles the block layout lists,
partial ones first and full ones after. That computes the IR's ``iterate m1`` loop only if

1. the loop reads keys at ``m1 * M0 + m0``: its tiles are the layout's 1-D key tiles of M0
   tokens, and ``m1`` may be any tile index;
2. an empty tile changes nothing: every reduction over the key block has each conjunct of
   the mask in its fiber, so over a tile where the mask holds nowhere it gives the identity;
3. the order of tiles does not matter: every running value is a running max (min) of a
   local max (min), or the sum of local sums and the previous value, the previous value
   possibly rescaled by a factor that is 1 when the running maxima did not move (the online
   softmax's ``exp(m_old - m_new)``).

``sparse_loop`` checks these on the plan and returns what the full-tile body needs; a
``KernelError`` says which condition failed, at which statement.

``FullTilePresence`` is the presence of the loop's tensors inside a *full* tile: the
conjuncts of the mask (predicates of statements over both query and key tiles) hold at
every point, and every key is inside the sequence (the layout lists tiles that overhang the
end as partial), so both kinds of condition are dropped; all others (head-dim padding,
query rows, other reads' ranges) stay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from einscade.codegen.triton.plan import Carried, KernelError, KernelPlan
from einscade.codegen.triton.presence import Chosen, Holds, InRange, Presence, Recipe, conjuncts
from einscade.ir.cascade import Cascade, Einsum, Iterate, Let, size_symbol
from einscade.ir.expr import Access, Binary, Call, Expr, Name, accesses, map_expr
from einscade.ir.printer import print_einsum, print_expr
from einscade.passes.naming import fresh_name


@dataclass(frozen=True)
class SparseLoop:
    """What the block-sparse schedule knows about a plan's key loop."""

    key: str  # the key rank of the untiled cascade: m
    key_size: str  # its size symbol: M
    key_index: Expr  # the key position in tile coordinates: m1 * M0 + m0
    mask: frozenset[Expr]  # predicate conjuncts of loop statements over query and key tiles


def sparse_loop(plan: KernelPlan) -> SparseLoop:
    """The facts a block-sparse schedule relies on (see the module docstring), or a
    ``KernelError`` naming the statement that breaks them."""
    key, index = _key_reads(plan)
    mask = _mask_conjuncts(plan)
    _check_empty_tiles_are_neutral(plan, mask)
    _check_order_free(plan)
    return SparseLoop(key, size_symbol(key), index, frozenset(mask))


def _key_reads(plan: KernelPlan) -> tuple[str, Expr]:
    """The input rank read at ``m1 * M0 + m0`` in the loop (the same everywhere)."""
    loop, block = plan.loop_rank, plan.key_rank
    expected = Binary("+", Binary("*", Name(loop), Name(size_symbol(block))), Name(block))
    found: dict[str, set[Expr]] = {}
    for stmt in plan.body:
        parts = [stmt.value] + ([stmt.predicate] if stmt.predicate is not None else [])
        for read in (a for part in parts for a in accesses(part)):
            decl = plan.cascade.input(read.tensor)
            if decl is None:
                continue
            for rank, index in zip(decl.ranks, read.indices, strict=True):
                if loop in plan.scope.ranks_in(index):
                    found.setdefault(rank, set()).add(plan.scope.expand(index))
    if len(found) != 1:
        ranks = ", ".join(sorted(found)) or "none"
        raise KernelError(
            f"'iterate {loop}': block-sparse loops need inputs read at one key rank, found {ranks}"
        )
    ((key, indices),) = found.items()
    if indices != {expected}:
        shown = ", ".join(sorted(print_expr(i) for i in indices))
        raise KernelError(
            f"'iterate {loop}': key {key!r} is read at {shown}; block-sparse loops need "
            f"{print_expr(expected)} (1-D key tiles of {size_symbol(block)} tokens)"
        )
    return key, expected


def _over_both_tiles(plan: KernelPlan, stmt: Einsum) -> bool:
    ranks = set(plan.ranks_of(stmt))
    return bool(ranks & {plan.tile_rank, plan.row_rank}) and plan.key_rank in ranks


def _mask_conjuncts(plan: KernelPlan) -> list[Expr]:
    found: list[Expr] = []
    for stmt in plan.body:
        if stmt.predicate is not None and _over_both_tiles(plan, stmt):
            found += [c for c in conjuncts(stmt.predicate) if c not in found]
    return found


def _check_empty_tiles_are_neutral(plan: KernelPlan, mask: list[Expr]) -> None:
    presence = Presence(plan)
    for stmt in plan.body:
        if stmt.reduce is None or plan.key_rank not in stmt.reduce.ranks:
            continue
        fiber = {r.expr for r in presence.statement(stmt)[1] if isinstance(r, Holds)}
        missing = [c for c in mask if c not in fiber]
        if missing:
            raise KernelError(
                f"{print_einsum(stmt)}: its fiber does not hold the mask conjunct "
                f"{print_expr(missing[0])}, so a skipped (empty) tile could change it"
            )


def _check_order_free(plan: KernelPlan) -> None:
    local = {
        s.target: s.reduce.op
        for s in plan.body
        if s.reduce is not None and plan.key_rank in s.reduce.ranks
    }
    maxima = {c.name for c in plan.carried.values() if _running_extreme(c, local)}
    defs = {s.target: s for s in plan.body}
    for carried in plan.carried.values():
        if carried.name in maxima:
            continue
        for term in _sum_terms(carried.update.value):
            if not _sum_term_ok(plan, term, carried, local, maxima, defs):
                raise KernelError(
                    f"{print_einsum(carried.update)}: term {print_expr(term)} may depend on "
                    "the order of key tiles; block-sparse loops take running maxima and "
                    "(rescaled) running sums of local reductions"
                )


def _running_extreme(carried: Carried, local: dict[str, str]) -> bool:
    """``R[m1 + 1] = max(R[m1], L[m1])`` with ``L`` a max over the key block (or min)."""
    value = carried.update.value
    if not (isinstance(value, Call) and value.fn in ("max", "min") and len(value.args) == 2):
        return False
    if not all(isinstance(a, Access) for a in value.args):
        return False
    names = [a.tensor for a in value.args]  # type: ignore[union-attr]
    if carried.name not in names:
        return False
    other = names[1 - names.index(carried.name)]
    return local.get(other) == value.fn


def _sum_terms(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "+":
        return _sum_terms(expr.lhs) + _sum_terms(expr.rhs)
    return [expr]


def _factors(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "*":
        return _factors(expr.lhs) + _factors(expr.rhs)
    return [expr]


def _sum_term_ok(plan, term, carried, local, maxima, defs) -> bool:  # type: ignore[no-untyped-def]
    """A local sum, the previous value, or the previous value times rescale factors."""
    if isinstance(term, Access) and local.get(term.tensor) == "sum":
        return True
    factors = _factors(term)
    previous = [f for f in factors if isinstance(f, Access) and f.tensor == carried.name]
    if len(previous) != 1 or _generation(plan, previous[0]) != Name(plan.loop_rank):
        return False
    rest = [f for f in factors if f is not previous[0]]
    return all(_is_rescale(plan, f, maxima, defs) for f in rest)


def _generation(plan: KernelPlan, access: Access) -> Expr | None:
    position = plan.scope.tensors[access.tensor].generation
    return None if position is None else access.indices[position]


def _is_rescale(plan, factor, maxima, defs) -> bool:  # type: ignore[no-untyped-def]
    """A tensor ``C = exp(f(R[m1]) - f(R[m1 + 1]))`` of running maxima ``R``: 1 when the
    maxima did not move (checked by reading ``R[m1 + 1]`` as ``R[m1]``)."""
    if not isinstance(factor, Access) or factor.tensor not in defs:
        return False
    stmt = defs[factor.tensor]
    if stmt.reduce is not None or stmt.predicate is not None:
        return False
    reads = accesses(stmt.value)
    if not reads or any(r.tensor not in maxima for r in reads):
        return False
    loop = Name(plan.loop_rank)

    def current(node: Expr) -> Expr | None:
        if isinstance(node, Access) and node.tensor in maxima:
            position = plan.scope.tensors[node.tensor].generation
            assert position is not None
            indices = list(node.indices)
            indices[position] = loop
            return Access(node.tensor, tuple(indices))
        return None

    value = map_expr(stmt.value, current)
    if not (isinstance(value, Call) and value.fn in ("exp", "exp2")):
        return False
    shift = value.args[0]
    return isinstance(shift, Binary) and shift.op == "-" and shift.lhs == shift.rhs


class FullTilePresence(Presence):
    """Presence inside a full key tile: the mask's conjuncts and the key's range check are
    known to hold there (see the module docstring)."""

    def __init__(self, plan: KernelPlan, loop: SparseLoop):
        self.loop = loop
        super().__init__(plan)

    def read(self, access: Access) -> tuple[Recipe, ...]:
        return self._keep(super().read(access))

    def statement(self, stmt: Einsum) -> tuple[tuple[Recipe, ...], tuple[Recipe, ...]]:
        kept, fiber = super().statement(stmt)
        return self._keep(kept), self._keep(fiber)

    def _keep(self, recipes: tuple[Recipe, ...]) -> tuple[Recipe, ...]:
        kept: list[Recipe] = []
        for recipe in recipes:
            if isinstance(recipe, Chosen):
                then, other = self._keep(recipe.then), self._keep(recipe.other)
                if then or other:
                    kept.append(Chosen(recipe.cond, then, other))
            elif not self._holds_in_full_tiles(recipe):
                kept.append(recipe)
        return tuple(kept)

    def _holds_in_full_tiles(self, recipe: Recipe) -> bool:
        if isinstance(recipe, Holds):
            return recipe.expr in self.loop.mask
        if isinstance(recipe, InRange) and recipe.bound == self.loop.key_size:
            return self.scope.expand(recipe.index) == self.loop.key_index
        return False


def with_key_let(cascade: Cascade) -> tuple[Cascade, str]:
    """The tiled cascade with its key position ``m1 * M0 + m0`` named by a let (first among
    the lets, so that ``let mx = key // MY`` reads it), and the let's name. Box key mode
    binds that name to the key tokens of a chunk instead of the tile's range."""
    plan = KernelPlan(cascade)
    block = plan.key_rank
    index = Binary("+", Binary("*", Name(plan.loop_rank), Name(size_symbol(block))), Name(block))
    name = fresh_name("key", plan.scope.taken_names())

    def swap(node: Expr) -> Expr | None:
        return Name(name) if node == index else None

    def einsum(stmt: Einsum) -> Einsum:
        predicate = None if stmt.predicate is None else map_expr(stmt.predicate, swap)
        return replace(stmt, value=map_expr(stmt.value, swap), predicate=predicate)

    body = tuple(
        replace(s, body=tuple(einsum(e) for e in s.body)) if isinstance(s, Iterate) else einsum(s)
        for s in cascade.body
    )
    lets = (Let(name, index), *(replace(x, value=map_expr(x.value, swap)) for x in cascade.lets))
    return replace(cascade, body=body, lets=lets), name
