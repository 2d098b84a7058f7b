"""Which points of each tensor exist, as conditions the kernel can test (the IR's sparsity).

The IR says a map point exists iff its operands exist and its predicate holds; an
out-of-range read is absent; a reduction reduces the existing points of its fiber (the
identity if none) and its output point exists iff the conditions that do not vary along the
reduced ranks hold. A kernel keeps the same facts as *recipes*: conditions written in IR
terms that the lowering turns into boolean blocks when a reduction or a store needs them.

- ``InRange(index, bound)``: ``index < bound`` (or ``index >= 0`` when ``bound`` is None);
  reads of inputs and padded head axes (``e < E`` where ``e`` runs to ``E_PAD``).
- ``Holds(expr)``: one conjunct of a statement's predicate.
- ``Chosen(cond, then, other)``: the presence of ``where(cond, a, b)`` when the branches'
  presences differ.

Presence is computed once, statically, before any code is emitted. Iterative tensors get
one presence for all generations (a fixpoint over the loop body); it must not vary with the
loop rank, since the kernel carries values across key tiles but not masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from einscade.codegen.triton.plan import KernelError, KernelPlan
from einscade.ir.cascade import Einsum, size_symbol
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary
from einscade.ir.printer import print_einsum, print_expr


@dataclass(frozen=True)
class InRange:
    index: Expr
    bound: str | None  # a size symbol; None: the lower bound 0


@dataclass(frozen=True)
class Holds:
    expr: Expr
    owner: str = field(default="", compare=False)  # the statement it masks (for names)


@dataclass(frozen=True)
class Chosen:
    cond: Expr
    then: tuple[Recipe, ...]
    other: tuple[Recipe, ...]


Recipe = InRange | Holds | Chosen


def describe(recipe: Recipe) -> str:
    match recipe:
        case InRange(index=i, bound=None):
            return f"{print_expr(i)} >= 0"
        case InRange(index=i, bound=b):
            return f"{print_expr(i)} < {b}"
        case Holds(expr=e):
            return print_expr(e)
        case Chosen(cond=c):
            return f"presence chosen by {print_expr(c)}"
    raise TypeError(recipe)


def conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "and":
        return conjuncts(expr.lhs) + conjuncts(expr.rhs)
    return [expr]


def _union(*groups: tuple[Recipe, ...]) -> tuple[Recipe, ...]:
    seen: dict[Recipe, None] = {}
    for group in groups:
        for recipe in group:
            seen.setdefault(recipe, None)
    return tuple(seen)


class Presence:
    """Presence recipes of every tensor and statement of a plan."""

    def __init__(self, plan: KernelPlan):
        self.plan = plan
        self.scope = plan.scope
        self.tensors: dict[str, tuple[Recipe, ...]] = {}
        for stmt in plan.before:
            self.tensors[stmt.target] = self.statement(stmt)[0]
        self._loop_fixpoint()
        for stmt in plan.after:
            self.tensors[stmt.target] = self.statement(stmt)[0]
        for store in plan.stores:
            self.tensors[store.output] = self.tensors[store.source]

    # -- static facts --------------------------------------------------------------------
    def nonneg(self, expr: Expr) -> bool:
        """Whether an integer expression is provably >= 0 (ranks and sizes are)."""
        match expr:
            case Num(value=v):
                return v >= 0
            case Name(id=n) if n in self.scope.lets:
                return self.nonneg(self.scope.lets[n])
            case Name(id=n):
                return n in self.scope.ranks or n in self.scope.sizes
            case Binary(op=op, lhs=a, rhs=b) if op in ("+", "*", "//", "%"):
                return self.nonneg(a) and self.nonneg(b)
            case Call(fn="abs"):
                return True
            case Call(fn="max", args=(a, b)):
                return self.nonneg(a) or self.nonneg(b)
            case Call(fn="min", args=(a, b)):
                return self.nonneg(a) and self.nonneg(b)
        return False

    def axes(self, recipe: Recipe) -> frozenset[str]:
        match recipe:
            case InRange(index=i):
                return frozenset(self.plan.expr_axes(i))
            case Holds(expr=e):
                return frozenset(self.plan.expr_axes(e))
            case Chosen(cond=c, then=t, other=o):
                found = frozenset(self.plan.expr_axes(c))
                for inner in t + o:
                    found |= self.axes(inner)
                return found
        raise TypeError(recipe)

    def varies_with_loop(self, recipe: Recipe) -> bool:
        match recipe:
            case InRange(index=i):
                return self.plan.loop_dependent(i)
            case Holds(expr=e):
                return self.plan.loop_dependent(e)
            case Chosen(cond=c, then=t, other=o):
                return self.plan.loop_dependent(c) or any(self.varies_with_loop(r) for r in t + o)
        raise TypeError(recipe)

    # -- expressions ---------------------------------------------------------------------
    def read(self, access: Access) -> tuple[Recipe, ...]:
        decl = self.plan.cascade.input(access.tensor)
        if decl is None:
            return self.tensors.get(access.tensor, ())
        found: list[Recipe] = []
        for rank, index in zip(decl.ranks, access.indices, strict=True):
            if not self.nonneg(index):
                found.append(InRange(index, None))
            if not self._provably_below(index, rank):
                found.append(InRange(index, size_symbol(rank)))
        return tuple(found)

    def _provably_below(self, index: Expr, rank: str) -> bool:
        """A rank coordinate is below its own size unless it runs over a padded block."""
        return index == Name(rank) and rank not in self.plan.padded

    def of(self, expr: Expr) -> tuple[Recipe, ...]:
        """Presence of a value or predicate expression: the union over its reads."""
        match expr:
            case Access():
                return self.read(expr)
            case Unary(operand=x):
                return self.of(x)
            case Binary(lhs=a, rhs=b):
                return _union(self.of(a), self.of(b))
            case Call(fn="where", args=(c, a, b)):
                return self._where(c, a, b)
            case Call(args=args):
                return _union(*(self.of(a) for a in args))
        return ()

    def _where(self, cond: Expr, a: Expr, b: Expr) -> tuple[Recipe, ...]:
        pc, pa, pb = self.of(cond), self.of(a), self.of(b)
        both = tuple(r for r in pa if r in pb)
        known = _union(pc, both)
        rest_a = tuple(r for r in pa if r not in known)
        rest_b = tuple(r for r in pb if r not in known)
        if not rest_a and not rest_b:
            return known
        return _union(known, (Chosen(cond, rest_a, rest_b),))

    # -- statements ----------------------------------------------------------------------
    def statement(self, stmt: Einsum) -> tuple[tuple[Recipe, ...], tuple[Recipe, ...]]:
        """(kept, fiber): the result's presence and, for a reduction, the conditions that
        select points of each fiber."""
        found = self.of(stmt.value)
        if stmt.predicate is not None:
            for part in conjuncts(stmt.predicate):
                found = _union(found, self.of(part), (Holds(part, stmt.target),))
        padded = [r for r in self.plan.ranks_of(stmt) if r in self.plan.padded]
        found = _union(found, tuple(InRange(Name(r), size_symbol(r)) for r in padded))
        if stmt.reduce is None:
            return found, ()
        reduced = set(stmt.reduce.ranks)
        fiber = tuple(r for r in found if self.axes(r) & reduced)
        kept = tuple(r for r in found if r not in fiber)
        return kept, fiber

    def _loop_fixpoint(self) -> None:
        """Presence of the loop's tensors; iterative ones start from their generation 0."""
        carried = self.plan.carried
        for name, c in carried.items():
            self.tensors[name] = self.statement(c.init)[0]
        for _ in range(len(self.plan.body) + 2):
            before = dict(self.tensors)
            for stmt in self.plan.body:
                kept = self.statement(stmt)[0]
                if stmt.target in carried:
                    kept = _union(self.tensors[stmt.target], kept)
                self.tensors[stmt.target] = kept
            if before == self.tensors:
                break
        for name, c in carried.items():
            for recipe in self.tensors[name]:
                if self.varies_with_loop(recipe):
                    raise KernelError(
                        f"{print_einsum(c.update)}: whether a point of {name} exists changes "
                        f"from key tile to key tile ({describe(recipe)}); kernels carry "
                        "values across tiles, not masks"
                    )
