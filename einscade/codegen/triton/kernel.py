"""Assemble the Triton kernel source of a fused, tiled cascade.

``emit_kernel`` walks the statements (``statements.py``) and lays the lines out as

    header     program ids -> tile and batch coordinates, tl.arange blocks
    prologue   generation-0 values, loop-invariant loads and masks
    loops      one iteration per key tile (``schedule.py``), then ``T = T_next``
    epilogue   statements after the loop, the log-sum-exp, masked stores

and returns the text with the list of kernel arguments the launcher fills in. A dense
schedule has one loop over every key tile. A block-sparse one has two copies of the loop
body, generated from the same statements: the partial-tile body with every presence
condition, the full-tile body with the mask's conditions and the key range check dropped
(``sparsity.FullTilePresence``); work both bodies hoist lands in the shared prologue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einscade.codegen.triton.args import KernelArg
from einscade.codegen.triton.emitter import EPILOGUE, LOOP, PROLOGUE, RESERVED, Emitter, Namer, Val
from einscade.codegen.triton.functions import HELPER_NAMES, HELPERS, REDUCE_IMPORT
from einscade.codegen.triton.lower import Lowerer
from einscade.codegen.triton.plan import KernelError, KernelPlan
from einscade.codegen.triton.presence import Presence
from einscade.codegen.triton.schedule import BlockSparseSchedule, BoxKeys, DenseSchedule
from einscade.codegen.triton.sparsity import (
    FullTilePresence,
    SparseLoop,
    sparse_loop,
    with_key_let,
)
from einscade.codegen.triton.statements import StatementLowering
from einscade.ir import print_cascade
from einscade.ir.cascade import Cascade, size_symbol

DTYPES = ("float16", "bfloat16", "float32")


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
    schedule: str = "dense"  # or "block_sparse": the kernel reads a block layout
    layout_ranks: tuple[str, ...] = ()  # batch ranks the block layout varies along


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
    def __init__(
        self, cascade: Cascade, dtype: str, dot_upcast: bool,
        layout_ranks: tuple[str, ...] | None, count_visits: bool,
        key_let: str | None = None, key_axes: int = 1,
    ):  # fmt: skip
        if dtype not in DTYPES:
            raise KernelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.cascade = cascade
        self.dtype = dtype
        self.plan = KernelPlan(cascade)
        self.names = Namer(_reserved(self.plan))
        self.out = Emitter(self.names)
        self.low = Lowerer(self.plan, Presence(self.plan), self.out, self.names)
        self.stmts = StatementLowering(self.plan, self.low, dtype, dot_upcast)
        self.sparse: SparseLoop | None = None
        self.key_let = key_let
        self.schedule = self._schedule(layout_ranks, count_visits, key_axes)
        self.header: list[str] = []
        self.bodies: list[list[str]] = []
        self.lse_name: str | None = None

    def _schedule(
        self, layout_ranks: tuple[str, ...] | None, count_visits: bool, key_axes: int
    ) -> DenseSchedule | BlockSparseSchedule:
        plan = self.plan
        if layout_ranks is None:
            schedule = DenseSchedule(plan.loop_rank, plan.tile_rank, self.names, count_visits)
        else:
            stray = [r for r in layout_ranks if r not in plan.batch]
            if stray:
                raise KernelError(
                    f"the block layout varies along {stray[0]!r}, which is not a batch rank "
                    f"of @{self.cascade.name} ({', '.join(plan.batch) or 'none'})"
                )
            self.sparse = sparse_loop(plan)
            box = None
            if self.key_let is not None:
                key = self.names.fresh(self.key_let)
                box = BoxKeys(key, plan.key_rank, self.sparse.key_size, key_axes)
            schedule = BlockSparseSchedule(
                plan.loop_rank, plan.tile_rank, layout_ranks, self.names, count_visits, box
            )
        fixed = plan.scope.ranks | plan.scope.sizes | {p.name for p in plan.cascade.params}
        clash = schedule.generated_names() & fixed
        if clash:
            raise KernelError(f"name {sorted(clash)[0]!r} clashes with a generated kernel name")
        self.names.taken |= schedule.generated_names()
        return schedule

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
        self.bodies.append(self.loop_body())
        if self.sparse is not None:
            # The full-tile loop: the same statements, with the mask's conditions dropped.
            every = stmts.presence
            stmts.use_presence(FullTilePresence(plan, self.sparse))
            stmts.reenter()
            self.bodies.append(self.loop_body())
            stmts.use_presence(every)
        for stmt in plan.after:
            stmts.statement(stmt, EPILOGUE)
        if plan.lse is not None:
            self.lse_name = "LSE"
            stmts.lse(self.lse_name)
        for store in plan.stores:
            stmts.store(store)
        for size in self.schedule.sizes():
            self.low.args.size(size)

    def loop_body(self) -> list[str]:
        """One copy of the loop body's lines, ending with the carry of running values."""
        stmts = self.stmts
        box = self.schedule.box
        if box is not None and self.key_let is not None:
            # The loop head computes the chunk's key tokens; the body reads them as the let.
            key = Val(box.key, (box.block,), "int", LOOP, nonneg=True, traced=True)
            self.low.lets[(self.key_let, LOOP)] = key
        updates = {c.update.target: c for c in self.plan.carried.values()}
        for stmt in self.plan.body:
            if stmt.target in updates and stmt is updates[stmt.target].update:
                stmts.update(updates[stmt.target])
            else:
                stmts.statement(stmt, LOOP)
        stmts.carry()
        return self.out.take(LOOP)

    # -- arguments and text --------------------------------------------------------------
    def arguments(self) -> tuple[KernelArg, ...]:
        plan = self.plan
        tensors = [d.name for d in plan.cascade.inputs] + [s.output for s in plan.stores]
        if self.lse_name:
            tensors.append(self.lse_name)
        args = [KernelArg(f"{t}_ptr", "pointer", t) for t in tensors]
        args += self.schedule.arguments()
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
        body = self.header + self.out.lines[PROLOGUE] + self.schedule.render(self.bodies)
        lines += ["    " + line for line in body + self.out.lines[EPILOGUE]]
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
        layout_ranks = self.schedule.layout_ranks
        return KernelSource(
            name, self.text(name, args), args, size_symbol(plan.tile_rank),
            tuple(size_symbol(r) for r in plan.batch), outputs, lse, self.dtype,
            self.schedule.kind, layout_ranks,
        )  # fmt: skip


def emit_kernel(
    cascade: Cascade,
    *,
    dtype: str = "float16",
    dot_upcast: bool = False,
    layout_ranks: tuple[str, ...] | None = None,
    count_visits: bool = False,
    key_mode: str = "grid",
    key_axes: int = 1,
) -> KernelSource:
    """The Triton source of a fused, tiled cascade (the output of
    ``defer-div,online-softmax,tile{p=...,m=...},dce``).

    ``dtype`` is the storage dtype of the float inputs: ``tl.dot`` operands computed in fp32
    are cast to it. ``dot_upcast`` feeds ``tl.dot`` fp32 operands instead (exact for fp16 and
    bf16 values; Triton's interpreter multiplies bf16 blocks wrongly).

    ``layout_ranks`` selects the block-sparse schedule (``schedule.py``): the kernel reads
    its key tiles from a block layout whose rows vary along these batch ranks (``()``: one
    row per query tile); None visits every key tile. ``key_mode="box"`` reads chunks of key
    boxes of a key grid with ``key_axes`` axes instead of 1-D key tiles (``layout.py``).
    ``count_visits`` adds the debug output ``VISITS`` (key tiles visited per program).
    """
    key_let = None
    if layout_ranks is not None and key_mode == "box":
        cascade, key_let = with_key_let(cascade)
    elif key_mode != "grid":
        raise KernelError(f"key_mode must be 'grid' or 'box' (block-sparse only), got {key_mode!r}")
    assembler = _Assembler(
        cascade, dtype, dot_upcast, layout_ranks, count_visits, key_let, key_axes
    )
    return assembler.build()
