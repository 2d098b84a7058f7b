"""Assemble the Triton kernel source of a fused, tiled cascade.

``emit_kernel`` walks the statements (``statements.py``) and lays the lines out as

    header     program ids -> tile and batch coordinates, tl.arange blocks
    prologue   generation-0 values, loop-invariant loads and masks
    loop       one iteration per key tile (``schedule.py``), then ``T = T_next``
    epilogue   statements after the loop, the log-sum-exp, masked stores

and returns the text with the list of kernel arguments the launcher fills in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einscade.codegen.triton.emitter import EPILOGUE, LOOP, PROLOGUE, RESERVED, Emitter, Namer, Val
from einscade.codegen.triton.functions import HELPER_NAMES, HELPERS, REDUCE_IMPORT
from einscade.codegen.triton.lower import Lowerer
from einscade.codegen.triton.plan import KernelError, KernelPlan
from einscade.codegen.triton.presence import Presence
from einscade.codegen.triton.schedule import DenseSchedule
from einscade.codegen.triton.statements import StatementLowering
from einscade.ir import print_cascade
from einscade.ir.cascade import Cascade, size_symbol

DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class KernelArg:
    """One kernel parameter and where its value comes from at launch.

    role: ``pointer`` (tensor), ``stride`` (tensor, dim), ``size`` (a bound size symbol),
    ``param``, ``constant`` (constexpr fixed by the cascade: ``value``), ``head`` (constexpr
    head size bound at launch), ``pad`` (constexpr: the head size ``tensor`` rounded up to a
    power of two, at least 16)."""

    name: str
    role: str
    tensor: str = ""
    dim: int = -1
    value: int | None = None

    @property
    def constexpr(self) -> bool:
        return self.role in ("constant", "head", "pad")


@dataclass(frozen=True)
class KernelSource:
    """Generated source and what launching it needs."""

    name: str
    text: str
    args: tuple[KernelArg, ...]
    tile_count: str  # size symbol of grid axis 0 (query tiles)
    batch: tuple[str, ...]  # size symbols whose product is grid axis 1
    outputs: tuple[tuple[str, tuple[str, ...]], ...]  # output tensors and their ranks
    lse: tuple[str, tuple[str, ...]] | None  # log-sum-exp output and its ranks
    dtype: str


def pad(extent: int) -> int:
    """A head axis's block: the next power of two, at least 16 (the smallest tl.dot K)."""
    return max(16, 1 << max(0, math.ceil(math.log2(max(extent, 1)))))


def _reserved(plan: KernelPlan) -> set[str]:
    scope = plan.scope
    fixed = scope.ranks | scope.sizes | {p.name for p in plan.cascade.params}
    for name in sorted(fixed):
        if name in RESERVED or name in HELPER_NAMES:
            raise KernelError(f"name {name!r} of @{plan.cascade.name} is reserved in Python/Triton")
    tensors = [d.name for d in plan.cascade.inputs] + [s.output for s in plan.stores]
    pointers = {f"{t}_ptr" for t in tensors} | {"LSE_ptr"}
    pads = {plan.block(a) for a in plan.padded}
    clash = (pointers | pads) & fixed
    if clash:
        raise KernelError(f"name {sorted(clash)[0]!r} clashes with a generated kernel name")
    return fixed | pointers | pads | set(HELPER_NAMES)


class _Assembler:
    def __init__(self, cascade: Cascade, dtype: str, dot_upcast: bool):
        if dtype not in DTYPES:
            raise KernelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.cascade = cascade
        self.dtype = dtype
        self.plan = KernelPlan(cascade)
        self.names = Namer(_reserved(self.plan))
        self.out = Emitter(self.names)
        self.low = Lowerer(self.plan, Presence(self.plan), self.out, self.names)
        self.stmts = StatementLowering(self.plan, self.low, dtype, dot_upcast)
        self.schedule = DenseSchedule(self.plan.loop_rank, size_symbol(self.plan.loop_rank))
        self.header: list[str] = []
        self.lse_name: str | None = None

    # -- coordinates ---------------------------------------------------------------------
    def coordinates(self) -> None:
        plan, low = self.plan, self.low
        self.header.append(
            f"# program: query tile {plan.tile_rank}, batch ({', '.join(plan.batch)})"
        )
        self.header.append(f"{plan.tile_rank} = tl.program_id(0)")
        low.coords[plan.tile_rank] = Val(plan.tile_rank, kind="int", nonneg=True, traced=True)
        if plan.batch:
            pid = self.names.fresh("pid_" + "".join(plan.batch))
            self.header.append(f"{pid} = tl.program_id(1)")
            self.header += self.unflatten(pid, plan.batch)
        self.header.append("# block coordinates: rows, key columns, head axes")
        for axis in plan.axes:
            self.header.append(f"{axis} = tl.arange(0, {plan.block(axis)})")
            low.coords[axis] = Val(axis, (axis,), "int", nonneg=True, traced=True)
        low.coords[plan.loop_rank] = Val(plan.loop_rank, (), "int", LOOP, nonneg=True, traced=True)

    def unflatten(self, pid: str, ranks: tuple[str, ...]) -> list[str]:
        """Row-major digits of the flat batch program id: ``b = pid // H``, ``h = pid % H``."""
        lines = []
        for k, rank in enumerate(ranks):
            later = [size_symbol(r) for r in ranks[k + 1 :]]
            value = pid
            if later:
                divisor = later[0] if len(later) == 1 else f"({' * '.join(later)})"
                value = f"{pid} // {divisor}"
            if k:
                value = (
                    f"({value}) % {size_symbol(rank)}"
                    if later
                    else f"{value} % {size_symbol(rank)}"
                )
            for size in later + ([size_symbol(rank)] if k else []):
                self.low.args.size(size)
            lines.append(f"{rank} = {value}")
            self.low.coords[rank] = Val(rank, kind="int", nonneg=True, traced=True)
        return lines

    # -- statements ----------------------------------------------------------------------
    def lower(self) -> None:
        plan, stmts = self.plan, self.stmts
        for stmt in plan.before:
            stmts.statement(stmt, PROLOGUE)
        for carried in plan.carried.values():
            stmts.init(carried)
        updates = {c.update.target: c for c in plan.carried.values()}
        for stmt in plan.body:
            if stmt.target in updates and stmt is updates[stmt.target].update:
                stmts.update(updates[stmt.target])
            else:
                stmts.statement(stmt, LOOP)
        stmts.carry()
        for stmt in plan.after:
            stmts.statement(stmt, EPILOGUE)
        if plan.lse is not None:
            self.lse_name = "LSE"
            stmts.lse(self.lse_name)
        for store in plan.stores:
            stmts.store(store)
        for size in self.schedule.sizes():
            self.low.args.size(size)

    # -- arguments and text --------------------------------------------------------------
    def arguments(self) -> tuple[KernelArg, ...]:
        plan = self.plan
        tensors = [d.name for d in plan.cascade.inputs] + [s.output for s in plan.stores]
        if self.lse_name:
            tensors.append(self.lse_name)
        args = [KernelArg(f"{t}_ptr", "pointer", t) for t in tensors]
        args += [KernelArg(n, "stride", t, d) for (t, d), n in self.low.args.strides.items()]
        heads = {size_symbol(a) for a in plan.padded}
        blocks = {size_symbol(plan.row_rank), size_symbol(plan.key_rank)}
        sizes = [s for s in self.low.args.sizes if s not in heads and s not in plan.constants]
        args += [KernelArg(s, "size") for s in sizes]
        args += [KernelArg(p.name, "param") for p in plan.cascade.params]
        used = set(self.low.args.sizes) | blocks
        args += [KernelArg(s, "constant", value=v) for s, v in plan.constants.items() if s in used]
        args += [KernelArg(s, "head") for s in sorted(heads & set(self.low.args.sizes))]
        args += [KernelArg(plan.block(a), "pad", size_symbol(a)) for a in plan.padded]
        return tuple(args)

    def text(self, name: str, args: tuple[KernelArg, ...]) -> str:
        lines = [
            f'"""Triton kernel for @{self.cascade.name}, generated by einscade from:',
            "",
            *("    " + line for line in print_cascade(self.cascade).splitlines()),
            '"""',
            "",
            "import triton",
            "import triton.language as tl",
            "",
            "# tl.reduce with Triton's own combine functions is tl.max / tl.sum (see functions.py)",
            REDUCE_IMPORT,
            "",
        ]
        for helper in sorted(self.low.helpers):
            lines += ["", HELPERS[helper]]
        params = [f"    {a.name}: tl.constexpr," if a.constexpr else f"    {a.name}," for a in args]
        lines += ["", "@triton.jit", f"def {name}(", *params, "):"]
        body = self.header + self.out.lines[PROLOGUE] + self.schedule.head()
        lines += ["    " + line for line in body]
        loop = self.schedule.body_prefix() + self.out.lines[LOOP]
        lines += ["        " + line for line in loop]
        lines += ["    " + line for line in self.out.lines[EPILOGUE]]
        return "\n".join(lines) + "\n"

    def build(self) -> KernelSource:
        self.coordinates()
        self.lower()
        args = self.arguments()
        name = f"{self.cascade.name}_kernel"
        plan = self.plan
        outputs = tuple(
            (s.output, tuple(i.id for i in s.stmt.indices if hasattr(i, "id"))) for s in plan.stores
        )
        lse = None
        if self.lse_name is not None:
            lse = (self.lse_name, (*plan.batch, plan.stores[0].query))
        return KernelSource(
            name, self.text(name, args), args, size_symbol(plan.tile_rank),
            tuple(size_symbol(r) for r in plan.batch), outputs, lse, self.dtype,
        )  # fmt: skip


def emit_kernel(
    cascade: Cascade, *, dtype: str = "float16", dot_upcast: bool = False
) -> KernelSource:
    """The Triton source of a fused, tiled cascade (the output of
    ``defer-div,online-softmax,tile{p=...,m=...},dce``).

    ``dtype`` is the storage dtype of the float inputs: ``tl.dot`` operands computed in fp32
    are cast to it. ``dot_upcast`` feeds ``tl.dot`` fp32 operands instead (exact for fp16 and
    bf16 values; Triton's interpreter multiplies bf16 blocks wrongly).
    """
    return _Assembler(cascade, dtype, dot_upcast).build()
