"""Lowering the statements of a tiled cascade: maps, reductions, running values, stores.

- A map becomes one assignment ``T = <value>``.
- A reduction masks the points its fiber lacks with the reduction's identity
  (``tl.where(mask, x, float("-inf"))``) and reduces the block axis (``tl.max(x, axis=1)``).
  A sum over one axis of a product of two 2-D operands, ``Q[p0, e] * K[m0, e] :: sum(e)``,
  becomes ``tl.dot`` (fp32 accumulation); each fiber condition is applied to the operand
  that carries its axes, so the products of absent points are exactly 0.
- An iterative tensor is a loop-carried variable: generation 0 initializes it before the
  loop, the ``m1 + 1`` statement computes ``T_next`` and the loop ends with ``T = T_next``.
- An untile statement is a masked ``tl.store`` at the query position of each row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from einscade.codegen.bind import eval_scalar
from einscade.codegen.triton.emitter import (
    ATOM,
    EPILOGUE,
    LOOP,
    MUL,
    PROLOGUE,
    Emitter,
    Namer,
    Val,
    expand,
    ordered,
    paren,
)
from einscade.codegen.triton.functions import REDUCE_COMBINE, literal
from einscade.codegen.triton.lower import Lowerer
from einscade.codegen.triton.plan import Carried, KernelError, KernelPlan, Store
from einscade.codegen.triton.presence import Holds, InRange, Presence, Recipe
from einscade.ir.cascade import Einsum, size_symbol
from einscade.ir.errors import BindError
from einscade.ir.expr import Binary, Expr, Name
from einscade.ir.printer import print_einsum

_IDENTITY = {"sum": "0.0", "max": 'float("-inf")', "min": 'float("inf")'}
_TL_DTYPE = {"float16": "tl.float16", "bfloat16": "tl.bfloat16", "float32": "tl.float32"}
MIN_DOT = 16  # smallest extent tl.dot takes along any dimension


def _factors(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "*":
        return _factors(expr.lhs) + _factors(expr.rhs)
    return [expr]


@dataclass(frozen=True)
class DotShape:
    """How ``sum(r)`` of a product maps onto ``tl.dot(A, B)``: the factors that are A and
    B, the factors outside the product (scaled in after it), the result's axes (x, y)."""

    a: int
    b: int
    outer: tuple[int, ...]
    out: tuple[str, str]
    r: str


class StatementLowering:
    """Walks a plan's statements in order and writes their code (see module docstring)."""

    def __init__(self, plan: KernelPlan, low: Lowerer, dtype: str, dot_upcast: bool):
        self.plan = plan
        self.low = low
        self.presence: Presence = low.presence
        self.out: Emitter = low.out
        self.names: Namer = low.names
        self.elem = _TL_DTYPE[dtype]
        self.dot_upcast = dot_upcast
        self.carried_names: dict[str, str] = {}
        self.entry: dict[str, Val] = {}  # running values at the top of the loop

    def use_presence(self, presence: Presence) -> None:
        """Lower the following statements with other presence facts (a full tile's)."""
        self.presence = self.low.presence = presence

    # -- maps and reductions -------------------------------------------------------------
    def statement(self, stmt: Einsum, home: int) -> None:
        self.out.begin(print_einsum(stmt), home)
        floor = EPILOGUE if home == EPILOGUE else PROLOGUE
        if stmt.reduce is None:
            value = self.low.value(stmt.value, floor)
        else:
            value = self.reduction(stmt, floor)
        section = max(value.level, floor)
        result = self.out.assign(self.names.fresh(stmt.target), value, section)
        self.low.values[stmt.target] = replace(result, native=value.native, finite=False)

    def reduction(self, stmt: Einsum, floor: int) -> Val:
        assert stmt.reduce is not None
        for rank in stmt.reduce.ranks:
            if rank not in self.plan.axes:
                raise KernelError(f"{print_einsum(stmt)}: reduces {rank!r}, not a block axis")
        fiber = self.presence.statement(stmt)[1]
        if stmt.reduce.op == "sum":
            dot = self.dot(stmt, fiber, floor)
            if dot is not None:
                return dot
        return self.tree_reduction(stmt, fiber, floor)

    def tree_reduction(self, stmt: Einsum, fiber: tuple[Recipe, ...], floor: int) -> Val:
        assert stmt.reduce is not None
        op = stmt.reduce.op
        value = self.low.arith(self.low.value(stmt.value, floor))
        conds = [self.low.cond(r, floor) for r in fiber]
        reduced = stmt.reduce.ranks
        full = ordered([*value.axes, *(a for c in conds for a in c.axes), *reduced], self.plan.axes)
        block = self.masked(value, conds, op, stmt.target)
        covered = set(block.axes)
        code = expand(block, full).code
        if covered != set(full):
            shape = ", ".join(self.plan.block(a) for a in full)
            code = f"tl.broadcast_to({code}, ({shape},))"
        axes = list(full)
        for rank in sorted(reduced, key=axes.index, reverse=True):
            code = f"tl.reduce({code}, {axes.index(rank)}, {REDUCE_COMBINE[op]})"
            axes.remove(rank)
        level = max([value.level] + [c.level for c in conds])
        return Val(code, tuple(axes), "float", level, traced=True)

    def masked(self, value: Val, conds: list[Val], op: str, hint: str) -> Val:
        """``value`` with absent points set to the reduction's identity (bound, so that two
        reductions of the same operand share it)."""
        missing = [c for c in conds if not (op == "sum" and c.code in value.zero)]
        if not missing:
            return value
        mask_axes = ordered([a for c in missing for a in c.axes], self.plan.axes)
        mask = self.low.conjoin(missing, mask_axes)
        if len({c.code for c in missing}) > 1:
            mask = self.out.bind(mask, f"{hint}_fiber", PROLOGUE)
        both = ordered([*value.axes, *mask_axes], self.plan.axes)
        code = f"tl.where({expand(mask, both).code}, {expand(value, both).code}, {_IDENTITY[op]})"
        level = max(value.level, mask.level)
        block = Val(code, both, "float", level, traced=True, zero=value.zero)
        if op == "sum":
            block = replace(block, zero=value.zero | {c.code for c in missing})
        return self.out.bind(block, f"{_stem(value)}_masked", PROLOGUE)

    # -- tl.dot --------------------------------------------------------------------------
    def dot(self, stmt: Einsum, fiber: tuple[Recipe, ...], floor: int) -> Val | None:
        """``sum(r)`` of ``A[x, r] * B[r, y] * (factors over x, y)`` as ``tl.dot``, or None."""
        factors = _factors(stmt.value)
        shape = self.dot_shape(stmt, factors)
        if shape is None:
            return None
        sides = (
            set(self.plan.expr_axes(factors[shape.a])),
            set(self.plan.expr_axes(factors[shape.b])),
        )
        for recipe in fiber:
            if not any(self.presence.axes(recipe) <= side for side in sides):
                return None  # a condition no operand can carry: reduce the 3-D product
        return self.emit_dot(stmt, factors, shape, fiber, floor)

    def dot_shape(self, stmt: Einsum, factors: list[Expr]) -> DotShape | None:
        assert stmt.reduce is not None
        if len(stmt.reduce.ranks) != 1:
            return None
        r = stmt.reduce.ranks[0]
        axes = [set(self.plan.expr_axes(f)) for f in factors]
        inner = [k for k, a in enumerate(axes) if r in a]
        if len(inner) != 2:
            return None
        ka, kb = inner
        xa, xb = axes[ka] - {r}, axes[kb] - {r}
        if len(xa) != 1 or len(xb) != 1 or xa == xb:
            return None
        out = ordered(xa | xb, self.plan.axes)
        if ordered(xa, self.plan.axes) != out[:1]:
            ka, kb = kb, ka
        outer = tuple(k for k in range(len(factors)) if k not in (ka, kb))
        if set(self.plan.block_axes(stmt)) - set(out) or any(axes[k] - set(out) for k in outer):
            return None
        if any(self.extent(a) < MIN_DOT for a in (*out, r)):
            return None
        return DotShape(ka, kb, outer, (out[0], out[1]), r)

    def extent(self, axis: str) -> int:
        if axis in self.plan.padded:
            return MIN_DOT  # pads are at least 16 (see kernel.pad)
        return self.plan.block_size(axis)

    def emit_dot(
        self, stmt: Einsum, factors: list[Expr], shape: DotShape, fiber: tuple[Recipe, ...],
        floor: int,
    ) -> Val:  # fmt: skip
        a = self.low.value(factors[shape.a], floor)
        b = self.low.value(factors[shape.b], floor)
        on_a: list[Val] = []
        on_b: list[Val] = []
        for recipe in fiber:
            cond = self.low.cond(recipe, floor)
            if (cond.code in a.zero and b.finite) or (cond.code in b.zero and a.finite):
                continue  # that operand is already 0 there and the other is finite
            fits_a = set(cond.axes) <= set(a.axes)
            fits_b = set(cond.axes) <= set(b.axes)
            # An operand that may be infinite at absent points must be zeroed itself.
            (on_a if fits_a and (not a.finite or not fits_b) else on_b).append(cond)
        x, y = shape.out
        a = self.operand(a, on_a, (x, shape.r), stmt.target)
        b = self.operand(b, on_b, (shape.r, y), stmt.target)
        exact = self.elem == "tl.float32" or self.dot_upcast
        precision = ', input_precision="ieee"' if exact else ""
        code = f"tl.dot({a.code}, {b.code}{precision})"
        level = max(a.level, b.level)
        for k in shape.outer:
            factor = self.low.arith(self.low.value(factors[k], floor))
            code = f"{code} * {paren(expand(factor, shape.out), MUL + 1)}"
            level = max(level, factor.level)
        prec = MUL if shape.outer else ATOM
        return Val(code, shape.out, "float", level, prec=prec, traced=True)

    def operand(self, value: Val, conds: list[Val], order: tuple[str, str], hint: str) -> Val:
        """A dot operand: masked, in the MMA dtype, in (rows, cols) order."""
        if conds:
            value = self.masked(value, conds, "sum", hint)
        if self.dot_upcast:
            value = self.low.arith(value)
            if value.kind != "float" or not value.native:
                value = replace(value, code=f"{paren(value, ATOM)}.to(tl.float32)", prec=ATOM)
        elif not value.native and self.elem != "tl.float32":
            value = replace(value, code=f"{paren(value, ATOM)}.to({self.elem})", prec=ATOM)
        if value.axes != order:
            value = replace(value, code=f"tl.trans({value.code})", axes=order, prec=ATOM)
        return value

    # -- running values ------------------------------------------------------------------
    def shape(self, axes: tuple[str, ...]) -> str:
        return "[" + ", ".join(self.plan.block(a) for a in axes) + "]"

    def init(self, carried: Carried) -> None:
        stmt = carried.init
        self.out.begin(print_einsum(stmt), PROLOGUE)
        axes = self.plan.block_axes(stmt)
        value = self.low.arith(self.low.value(stmt.value, PROLOGUE))
        if value.const is not None:
            code = f"tl.full({self.shape(axes)}, {literal(float(value.const))}, tl.float32)"
        else:
            code = f"tl.zeros({self.shape(axes)}, tl.float32) + {expand(value, axes).code}"
        name = self.names.fresh(carried.name)
        self.carried_names[carried.name] = name
        self.out.assign(name, Val(code, axes), PROLOGUE)
        self.entry[carried.name] = Val(name, axes, level=LOOP, traced=True)
        self.low.current[carried.name] = self.entry[carried.name]

    def reenter(self) -> None:
        """Start another copy of the loop body: the running values are read at the top of
        the loop again (the block-sparse schedule's full-tile loop)."""
        self.low.current.update(self.entry)

    def update(self, carried: Carried) -> None:
        stmt = carried.update
        self.out.begin(print_einsum(stmt), LOOP)
        axes = self.plan.block_axes(carried.init)
        value = self.low.arith(self.low.value(stmt.value, LOOP))
        if value.axes != axes:
            if set(value.axes) - set(axes):
                raise KernelError(f"{print_einsum(stmt)}: varies along more axes than its init")
            code = f"tl.broadcast_to({expand(value, axes).code}, {self.shape(axes)})"
            value = Val(code, axes, level=LOOP)
        name = self.names.fresh(carried.name + "_next")
        self.low.next[carried.name] = self.out.assign(name, value, LOOP)

    def carry(self) -> None:
        self.out.begin("carry the running values into the next key tile", LOOP)
        for name in self.plan.carried:
            self.out.emit(LOOP, f"{self.carried_names[name]} = {self.low.next[name].code}")
        for name in self.plan.carried:
            self.low.final[name] = Val(
                self.carried_names[name], self.low.current[name].axes, level=EPILOGUE, traced=True
            )
        self.low.values = {k: v for k, v in self.low.values.items() if v.level != LOOP}
        self.low.lets = {k: v for k, v in self.low.lets.items() if k[1] != LOOP}
        self.low.next.clear()
        self.low.current.clear()

    # -- stores --------------------------------------------------------------------------
    def store(self, store: Store) -> None:
        self.out.begin(print_einsum(store.stmt), EPILOGUE)
        value = self.low.values[store.source]
        presence = self.presence.tensors[store.source]
        ranks = tuple(i.id for i in store.stmt.indices if isinstance(i, Name))
        self.write(store.output, ranks, store, value, presence)

    def write(
        self, output: str, ranks: tuple[str, ...], store: Store, value: Val,
        presence: tuple[Recipe, ...],
    ) -> None:  # fmt: skip
        """``tl.store`` of ``value`` into ``output[ranks]``, the query rank at its row."""
        plan = self.plan
        index: list[Expr] = [store.coordinate if r == store.query else Name(r) for r in ranks]
        indices = [self.low.value(i, EPILOGUE) for i in index]
        pointer, axes = self.low.pointer(output, ranks, indices, EPILOGUE)
        recipes: list[Recipe] = []
        if not self.presence.nonneg(store.coordinate):
            recipes.append(InRange(store.coordinate, None))
        recipes.append(InRange(store.coordinate, size_symbol(store.query)))
        if not untile_is_identity(plan, store):
            for part, rank in (
                (store.tile_index, plan.tile_rank),
                (store.row_index, plan.row_rank),
            ):
                check = Binary("==", plan.substitute_query(part, store), Name(rank))
                recipes.append(Holds(check, "row"))
        recipes += [InRange(Name(r), size_symbol(r)) for r in ranks if r in plan.padded]
        conds = [self.low.cond(r, EPILOGUE) for r in recipes]
        present = [self.low.cond(r, EPILOGUE) for r in presence]
        absent = [c for c in present if c.code not in {c.code for c in conds}]
        stored = self.low.arith(value)
        if absent:
            both = ordered([*stored.axes, *(a for c in absent for a in c.axes)], plan.axes)
            mask = self.low.conjoin(absent, both)
            stored = Val(f"tl.where({mask.code}, {expand(stored, both).code}, 0.0)", both)
        mask = self.low.conjoin(conds, axes)
        cast = f"{paren(expand(stored, axes), ATOM)}.to({output}_ptr.dtype.element_ty)"
        self.out.emit(EPILOGUE, f"tl.store({pointer.code}, {cast}, mask={mask.code})")

    def lse(self, name: str) -> None:
        """The log-sum-exp of each row: running max + log(running sum)."""
        lse = self.plan.lse
        assert lse is not None
        store = self.plan.stores[0]
        self.out.begin(f"{name}[...] = {lse.maximum}[M1, ...] + log({lse.total}[M1, ...])",
                       EPILOGUE)  # fmt: skip
        maximum, total = self.low.final[lse.maximum], self.low.final[lse.total]
        code = f"{maximum.code} + tl.log({total.code})"
        value = self.out.assign(self.names.fresh(name), Val(code, maximum.axes), EPILOGUE)
        ranks = (*self.plan.batch, store.query)
        self.write(name, ranks, store, value, ())


def _stem(value: Val) -> str:
    return value.code if value.code.isidentifier() else "operand"


def untile_is_identity(plan: KernelPlan, store: Store) -> bool:
    """Whether every (tile, row) maps back to itself through the untile indices, so that the
    store needs no check beyond the query range. True for 1-D tiles; false for boxes that
    overhang an inner grid axis (their last rows wrap onto other boxes' points). Evaluated
    for every row of every tile; the sizes involved must be constants, except the tile
    count, of which the first 256 are tried when it is known only at run time."""
    scope = plan.scope
    exprs = [
        scope.expand(plan.substitute_query(e, store)) for e in (store.tile_index, store.row_index)
    ]
    env: dict[str, int | float] = dict(plan.constants)
    tile_count = plan.constants.get(size_symbol(plan.tile_rank), 256)
    rows = plan.block_size(plan.row_rank)
    try:
        for p1 in range(tile_count):
            for p0 in range(rows):
                env[plan.tile_rank], env[plan.row_rank] = p1, p0
                if [eval_scalar(e, env) for e in exprs] != [p1, p0]:
                    return False
    except BindError:
        return False  # a size known only at run time: keep the check in the kernel
    return True
