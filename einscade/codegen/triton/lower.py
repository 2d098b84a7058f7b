"""Lowering IR expressions to Triton code over the kernel's block coordinates.

Every rank is a coordinate: a scalar for the program's tile and batch ranks and the loop
rank, a block (``tl.arange``) for rows, key columns and head axes. An expression lowers to a
``Val`` whose axes are the block axes it varies along; operands are broadcast by inserting
``None`` dims (``x[:, None]``), so index expressions, lets and predicates become integer and
boolean blocks with no special cases. A read of an input becomes a masked load at
``base + sum(index * stride)``: scalar index terms go into a per-program 64-bit base
pointer, block terms into the offsets, and each presence condition of the read into the
mask (``other=0``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace

from einscade.codegen.triton.emitter import (
    ATOM,
    CMP,
    MUL,
    PREC,
    PY_OP,
    UNARY,
    Emitter,
    Namer,
    Val,
    expand,
    ordered,
    paren,
)
from einscade.codegen.triton.functions import FOLD, HELPER_CALL, call_template, literal
from einscade.codegen.triton.plan import KernelError, KernelPlan
from einscade.codegen.triton.presence import Chosen, Holds, InRange, Presence, Recipe
from einscade.ir.cascade import size_symbol
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary
from einscade.ir.printer import print_expr
from einscade.ir.scope import generation_index

_FOLD_BINARY = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}
_COMPARE = {"==", "!=", "<", "<=", ">", ">="}


def _fold(fn, *args):  # type: ignore[no-untyped-def]
    """``fn(*args)`` on literals, or None where Python raises (1 / 0, log(-1)): the kernel
    then computes it and gets IEEE's inf or nan, as the reference does."""
    try:
        return fn(*args)
    except (ArithmeticError, ValueError):
        return None


@dataclass
class Arguments:
    """Kernel arguments the lowering referenced, in first-use order."""

    sizes: list[str] = field(default_factory=list)
    strides: dict[tuple[str, int], str] = field(default_factory=dict)

    def size(self, name: str) -> None:
        if name not in self.sizes:
            self.sizes.append(name)


class Lowerer:
    """Lowers expressions of one plan into an emitter (see the module docstring)."""

    def __init__(self, plan: KernelPlan, presence: Presence, emitter: Emitter, names: Namer):
        self.plan = plan
        self.scope = plan.scope
        self.presence = presence
        self.out = emitter
        self.names = names
        self.args = Arguments()
        self.helpers: set[str] = set()
        self.coords: dict[str, Val] = {}
        self.values: dict[str, Val] = {}  # computed tensors by name
        self.current: dict[str, Val] = {}  # iterative tensors at generation m1
        self.next: dict[str, Val] = {}  # ... at generation m1 + 1
        self.final: dict[str, Val] = {}  # ... after the loop
        self.lets: dict[tuple[str, int], Val] = {}
        self.let_defs = {let.name: let.value for let in plan.cascade.lets}  # unexpanded

    # -- names ---------------------------------------------------------------------------
    def name(self, name: str, floor: int) -> Val:
        if name in self.scope.lets:
            return self.let(name, floor)
        if name in self.coords:
            return self.coords[name]
        if name in self.scope.ranks:
            raise KernelError(f"rank {name!r} has no coordinate in the kernel")
        param = self.plan.cascade.param(name)
        if param is not None:
            return Val(name, kind=param.kind)
        if name in self.scope.sizes:
            self.args.size(name)
            return Val(name, kind="int", nonneg=True, const=self.plan.constants.get(name))
        raise KernelError(f"unknown name {name!r}")

    def let(self, name: str, floor: int) -> Val:
        value = self.value(self.let_defs[name], floor)
        section = max(value.level, floor)
        for s in self.out.visible(section):
            if (name, s) in self.lets:
                return self.lets[(name, s)]
        bound = self.out.assign(self.names.fresh(name), value, section)
        self.lets[(name, section)] = bound
        return bound

    # -- expressions ---------------------------------------------------------------------
    def value(self, expr: Expr, floor: int) -> Val:
        match expr:
            case Num(value=v):
                kind = "int" if isinstance(v, int) else "float"
                prec = ATOM if v >= 0 else UNARY
                return Val(literal(v), kind=kind, const=v, nonneg=v >= 0, finite=True, prec=prec)
            case Name(id=name):
                return self.name(name, floor)
            case Access():
                if self.plan.cascade.input(expr.tensor) is not None:
                    return self.load(expr, floor)
                return self.computed(expr)
            case Unary(op="-", operand=x):
                return self.negate(self.value(x, floor))
            case Unary(op="not", operand=x):
                v = self.value(x, floor)
                return replace(v, code=f"~{paren(v, UNARY)}", prec=UNARY, const=None)
            case Binary(op=op, lhs=a, rhs=b):
                return self.binary(op, self.value(a, floor), self.value(b, floor))
            case Call(fn=fn, args=args):
                return self.call(fn, [self.value(a, floor) for a in args])
        raise KernelError(f"cannot lower {expr!r}")

    def negate(self, v: Val) -> Val:
        if v.const is not None:
            return self.value(Num(-v.const), 0)
        v = self.arith(v)
        return replace(v, code=f"-{paren(v, UNARY)}", prec=UNARY, nonneg=False, zero=v.zero)

    @staticmethod
    def arith(v: Val) -> Val:
        """A tile loaded in its storage dtype, converted for fp32 arithmetic."""
        if not v.native:
            return v
        return replace(v, code=f"{paren(v, ATOM)}.to(tl.float32)", native=False, prec=ATOM)

    def binary(self, op: str, a: Val, b: Val) -> Val:
        if a.const is not None and b.const is not None and op in _FOLD_BINARY:
            folded = _fold(_FOLD_BINARY[op], a.const, b.const)
            if folded is not None:
                return self.value(Num(folded), 0)
        a, b = self.arith(a), self.arith(b)
        axes = ordered(a.axes + b.axes, self.plan.axes)
        ea, eb = expand(a, axes), expand(b, axes)
        common = dict(axes=axes, level=max(a.level, b.level), traced=a.traced or b.traced)
        if op in ("//", "%") and not (a.nonneg and b.nonneg):
            self.helpers.add(op)
            code = HELPER_CALL[op].format(ea.code, eb.code)
            return Val(code, kind="int", **common)
        prec = PREC[op]
        left = paren(ea, prec + 1 if op in _COMPARE else prec)
        code = f"{left} {PY_OP.get(op, op)} {paren(eb, prec + 1)}"
        if op in _COMPARE or op in ("and", "or"):
            return Val(code, kind="bool", prec=prec, **common)
        kind = "int" if a.kind == b.kind == "int" and op != "/" else "float"
        nonneg = a.nonneg and b.nonneg and op in ("+", "*", "//", "%")
        zero = frozenset()
        if op == "*":
            zero = (a.zero if b.finite else frozenset()) | (b.zero if a.finite else frozenset())
        return Val(code, kind=kind, prec=prec, nonneg=nonneg, zero=zero, **common)

    def call(self, fn: str, args: list[Val]) -> Val:
        if all(a.const is not None for a in args) and fn in FOLD:
            folded = _fold(FOLD[fn], *(a.const for a in args))
            if folded is not None:
                return self.value(Num(folded), 0)
        if fn == "neg":
            return self.negate(args[0])
        template = call_template(fn)
        if template is None:
            raise KernelError(f"function {fn!r} has no Triton lowering")
        if fn in HELPER_CALL:
            self.helpers.add(fn)
        args = [self.arith(a) for a in args]
        axes = ordered([x for a in args for x in a.axes], self.plan.axes)
        expanded = [expand(a, axes) for a in args]
        code = template.format(*(a.code for a in expanded))
        branches = args[1:] if fn == "where" else args
        kinds = {a.kind for a in branches}
        kind = "int" if kinds == {"int"} and fn in ("max", "min", "abs", "where") else "float"
        nonneg = fn == "abs" or (
            fn == "max" and any(a.nonneg for a in args)
        ) or (fn == "min" and all(a.nonneg for a in args))  # fmt: skip
        return Val(
            code, axes, kind, max(a.level for a in args), nonneg=nonneg and kind == "int",
            traced=any(a.traced for a in args),
        )  # fmt: skip

    # -- tensor reads --------------------------------------------------------------------
    def computed(self, access: Access) -> Val:
        name = access.tensor
        info = self.scope.tensors[name]
        indices = list(access.indices)
        ranks = list(info.ranks)
        generation = None
        if info.generation is not None:
            generation = indices.pop(info.generation)
            ranks.pop(info.generation)
        if indices != [Name(r) for r in ranks]:
            raise KernelError(
                f"{print_expr(access)}: a computed tensor is read at the point it was "
                f"defined ({name}[{', '.join(info.ranks)}]) in a kernel; other indices "
                "would need it in memory"
            )
        if generation is None:
            return self._known(self.values, name, access)
        loop = self.plan.loop_rank
        if generation == Name(loop):
            return self._known(self.current, name, access)
        if generation_index(generation, loop) == "next":
            return self._known(self.next, name, access)
        if generation == Name(size_symbol(loop)):
            return self._known(self.final, name, access)
        raise KernelError(
            f"{print_expr(access)}: only generations {loop}, {loop} + 1 and "
            f"{size_symbol(loop)} of an iterative tensor live in registers"
        )

    @staticmethod
    def _known(table: dict[str, Val], name: str, access: Access) -> Val:
        if name not in table:
            raise KernelError(f"{print_expr(access)} is read where the kernel has no value")
        return table[name]

    def stride(self, tensor: str, dim: int, ranks: tuple[str, ...]) -> str:
        key = (tensor, dim)
        if key not in self.args.strides:
            label = ranks[dim] if ranks.count(ranks[dim]) == 1 else str(dim)
            self.args.strides[key] = self.names.fresh(f"{tensor}_stride_{label}")
        return self.args.strides[key]

    def pointer(
        self, tensor: str, ranks: tuple[str, ...], indices: list[Val], floor: int
    ) -> tuple[Val, tuple[str, ...]]:
        """``ptr + sum(index * stride)``: scalar terms in a bound 64-bit base pointer."""
        axes = ordered([x for v in indices for x in v.axes], self.plan.axes)
        scalar, block = [], []
        for dim, v in enumerate(indices):
            stride = self.stride(tensor, dim, ranks)
            if v.axes:
                block.append(f"{paren(expand(v, axes), MUL)} * {stride}")
            elif v.const != 0:
                wide = f"{paren(v, ATOM)}.to(tl.int64)" if v.traced else paren(v, MUL)
                scalar.append(f"{wide} * {stride}")
        level = max([v.level for v in indices if not v.axes], default=0)
        base = Val(f"{tensor}_ptr", level=0)
        if scalar:
            code = " + ".join([base.code, *scalar])
            base = self.out.bind(Val(code, level=level, prec=PREC["+"]), f"{tensor}_base", floor)
        offsets = " + ".join([base.code, *block])
        level = max([base.level] + [v.level for v in indices])
        return Val(offsets, axes, level=level, prec=PREC["+"] if block else ATOM), axes

    def load(self, access: Access, floor: int) -> Val:
        name = access.tensor
        indices = [self.value(i, floor) for i in access.indices]
        for i, v in zip(access.indices, indices, strict=True):
            if v.kind != "int":
                raise KernelError(f"{print_expr(access)}: index {print_expr(i)} is not integer")
        ranks = self.plan.cascade.input(name).ranks  # type: ignore[union-attr]
        pointer, axes = self.pointer(name, ranks, indices, floor)
        conds = [self.cond(r, floor) for r in self.presence.read(access)]
        level = max([pointer.level] + [c.level for c in conds])
        lookup = name in self.plan.lookups
        other = "0" if lookup else "0.0"
        if conds:
            mask = self.conjoin(conds, axes)
            code = f"tl.load({pointer.code}, mask={mask.code}, other={other})"
        else:
            code = f"tl.load({pointer.code})"
        tile = Val(
            code, axes, "int" if lookup else "float", level, native=not lookup, finite=True,
            traced=True, zero=frozenset(c.code for c in conds),
        )  # fmt: skip
        return self.out.bind(tile, f"{name}_tile", floor)

    # -- conditions ----------------------------------------------------------------------
    def cond(self, recipe: Recipe, floor: int) -> Val:
        """A presence condition as a bound boolean block."""
        match recipe:
            case InRange(index=index, bound=None):
                v = self.value(index, floor)
                code, hint = f"{paren(v, CMP + 1)} >= 0", "nonneg"
            case InRange(index=index, bound=bound):
                v = self.value(index, floor)
                limit = self.name(bound, floor)
                code, hint = f"{paren(v, CMP + 1)} < {paren(limit, CMP + 1)}", f"in_{bound}"
            case Holds(expr=expr, owner=owner):
                v = self.value(expr, floor)
                if v.kind != "bool":
                    raise KernelError(f"predicate {print_expr(expr)} is not a condition")
                code, hint = v.code, f"{owner}_mask" if owner else "mask"
            case Chosen(cond=c, then=then, other=other):
                v = self.value(c, floor)
                axes = ordered(v.axes + self._axes_of(then + other), self.plan.axes)
                yes = self.conjoin([self.cond(r, floor) for r in then], axes).code
                no = self.conjoin([self.cond(r, floor) for r in other], axes).code
                code = f"tl.where({expand(v, axes).code}, {yes}, {no})"
                v, hint = replace(v, axes=axes), "chosen"
        cond = Val(code, v.axes, "bool", v.level, prec=CMP, traced=v.traced)
        return self.out.bind(cond, hint, floor)

    def _axes_of(self, recipes: tuple[Recipe, ...]) -> tuple[str, ...]:
        return tuple(a for r in recipes for a in self.presence.axes(r))

    def conjoin(self, conds: list[Val], axes: tuple[str, ...]) -> Val:
        """``a & b & ...`` over ``axes``; ``True`` if there are none."""
        if not conds:
            return Val("True", kind="bool")
        unique = list({c.code: c for c in conds}.values())
        if len(unique) == 1:
            return expand(unique[0], axes)
        parts = [paren(expand(c, axes), PREC["and"] + 1) for c in unique]
        level = max(c.level for c in unique)
        return Val(" & ".join(parts), axes, "bool", level, prec=PREC["and"], traced=True)
