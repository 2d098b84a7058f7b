"""The reference executor: evaluates any cascade densely with torch. The oracle of every
pass and kernel, written from the IR semantics alone (it shares no code with passes).

Each tensor is a pair (values, present). A statement is evaluated over its whole iteration
space by broadcasting: every rank is one axis, every access a gather (out-of-range reads are
absent points), and the predicate and the operands' presence decide which points exist.
Presence is kept as a tuple of conditions. For a reduction, the conditions that do not
involve the reduced ranks decide whether an output point exists (a padded tail stays
absent); the others decide which points of its fiber are reduced, and an empty fiber gives
the reduction's identity (a fully masked row has max -inf and sum 0). ``iterate`` blocks run
their body once per value of the iterated rank, in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from einscade.codegen.bind import Binding, bind
from einscade.codegen.torch_ops import TORCH_BINARY, TORCH_UNARY, all_of
from einscade.ir import ops
from einscade.ir.cascade import Cascade, Einsum, Iterate, size_symbol
from einscade.ir.errors import BindError
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary
from einscade.ir.scope import Scope, generation_index

Value = torch.Tensor | int | float


@dataclass
class Stored:
    """A tensor's values (absent points hold 0) and presence (None: present everywhere)."""

    values: torch.Tensor
    present: torch.Tensor | None


Presence = tuple[torch.Tensor, ...]  # conditions that must all hold; () = everywhere


def _split(conditions: Presence, reduced: tuple[int, ...]) -> tuple[Presence, Presence]:
    """(conditions constant along the reduced axes, conditions that vary along them)."""
    kept: list[torch.Tensor] = []
    fiber: list[torch.Tensor] = []
    for condition in conditions:
        varies = any(condition.dim() > d and condition.shape[d] != 1 for d in reduced)
        (fiber if varies else kept).append(condition)
    return tuple(kept), tuple(fiber)


def _conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "and":
        return _conjuncts(expr.lhs) + _conjuncts(expr.rhs)
    return [expr]


class _Space:
    """The iteration space of one statement: an axis per rank, coordinates by broadcasting."""

    def __init__(self, ranks: tuple[str, ...], extents: dict[str, int], fixed: dict[str, int]):
        self.ranks = ranks
        self.shape = tuple(1 if r in fixed else extents[r] for r in ranks)
        self.coords: dict[str, torch.Tensor] = {}
        for axis, rank in enumerate(ranks):
            view = [1] * len(ranks)
            view[axis] = -1
            coord = torch.tensor([fixed[rank]]) if rank in fixed else torch.arange(extents[rank])
            self.coords[rank] = coord.view(view)


class _Executor:
    def __init__(self, cascade: Cascade, binding: Binding, dtype: torch.dtype):
        self.cascade = cascade
        self.scope = Scope(cascade)
        self.binding = binding
        self.dtype = dtype
        self.store: dict[str, Stored] = {}

    # -- expressions ---------------------------------------------------------------------
    def extent(self, rank: str) -> int:
        symbol = size_symbol(rank)
        if symbol not in self.binding.sizes:
            raise BindError(f"size of rank {rank!r} ({symbol}) is not bound; pass {symbol}=...")
        return self.binding.sizes[symbol]

    def coordinate(self, rank: str, space: _Space) -> torch.Tensor:
        if rank in space.coords:
            return space.coords[rank]
        grid_rank = self.scope.axis_of.get(rank)
        if grid_rank is None or grid_rank not in space.coords:
            raise BindError(f"rank {rank!r} is not in the iteration space {space.ranks}")
        axes = self.scope.grids[grid_rank]
        stride = math.prod(self.extent(a) for a in axes[axes.index(rank) + 1 :])
        return (space.coords[grid_rank] // stride) % self.extent(rank)

    def name(self, name: str, space: _Space) -> Value:
        if name in self.scope.ranks:
            return self.coordinate(name, space)
        if name in self.binding.params:
            return self.binding.params[name]
        if name in self.binding.sizes:
            return self.binding.sizes[name]
        raise BindError(f"{name!r} is not bound")

    def access(self, node: Access, space: _Space) -> tuple[torch.Tensor, Presence]:
        stored = self.store[node.tensor]
        broadcast = self.binding.broadcast.get(node.tensor, frozenset())
        gathers: list[torch.Tensor] = []
        present: Presence = ()
        for dim, index_expr in enumerate(node.indices):
            raw, index_present = self.eval(index_expr, space)
            index = torch.as_tensor(raw, dtype=torch.long)
            present += index_present
            if dim in broadcast:
                gathers.append(torch.zeros_like(index))
                continue
            extent = stored.values.shape[dim]
            inside = (index >= 0) & (index < extent)
            if not bool(inside.all()):
                present += (inside,)
            gathers.append(index.clamp(0, max(extent - 1, 0)))
        values = stored.values[tuple(gathers)]
        if stored.present is not None:
            present += (stored.present[tuple(gathers)],)
        return values, present

    def eval(self, expr: Expr, space: _Space) -> tuple[Value, Presence]:
        match expr:
            case Num(value=v):
                return v, ()
            case Name(id=name) if name in self.scope.lets:
                return self.eval(self.scope.lets[name], space)
            case Name(id=name):
                return self.name(name, space), ()
            case Access():
                return self.access(expr, space)
            case Unary(op=op, operand=x):
                value, present = self.eval(x, space)
                return (~value if op == "not" else -value), present  # type: ignore[operator]
            case Binary(op=op, lhs=a, rhs=b):
                va, pa = self.eval(a, space)
                vb, pb = self.eval(b, space)
                return TORCH_BINARY[op](va, vb), pa + pb
            case Call(fn=fn, args=args):
                return self.call(fn, [self.eval(a, space) for a in args])
        raise TypeError(f"not an expression: {expr!r}")

    def tensor(self, value: Value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value if value.is_floating_point() else value.to(self.dtype)
        return torch.tensor(value, dtype=self.dtype)

    def call(self, fn: str, args: list[tuple[Value, Presence]]) -> tuple[Value, Presence]:
        present: Presence = sum((p for _, p in args), ())
        if fn in TORCH_UNARY:
            return TORCH_UNARY[fn](self.tensor(args[0][0])), present
        if fn in ("max", "min"):
            a, b = args[0][0], args[1][0]
            if _is_integer(a) and _is_integer(b):
                ta, tb = torch.as_tensor(a), torch.as_tensor(b)
            else:
                ta, tb = self.tensor(a), self.tensor(b)
            return (torch.maximum if fn == "max" else torch.minimum)(ta, tb), present
        if fn == "where":
            (cond, pc), (a, pa), (b, pb) = args
            condition = torch.as_tensor(cond)
            value = torch.where(condition, self.tensor(a), self.tensor(b))
            if not pa and not pb:
                return value, pc
            yes = torch.ones((), dtype=torch.bool)
            chosen = torch.where(condition, all_of(pa) if pa else yes, all_of(pb) if pb else yes)
            return value, pc + (chosen,)
        raise BindError(f"unknown function {fn!r}")

    # -- statements ----------------------------------------------------------------------
    def run_einsum(self, stmt: Einsum, fixed: dict[str, int], slot: int | None) -> None:
        ranks = self.scope.iteration_ranks(stmt)
        extents = {r: self.extent(r) for r in ranks if r not in fixed}
        space = _Space(ranks, extents, fixed)
        raw, present = self.eval(stmt.value, space)
        value = self.tensor(raw).expand(space.shape)
        if stmt.predicate is not None:
            for conjunct in _conjuncts(stmt.predicate):
                pred, pred_present = self.eval(conjunct, space)
                present += pred_present + (torch.as_tensor(pred),)
        kept = len(ranks) - (len(stmt.reduce.ranks) if stmt.reduce else 0)
        if stmt.reduce is not None:
            reduced = tuple(range(kept, len(ranks)))
            present, fiber = _split(present, reduced)
            in_fiber = all_of(fiber)
            if in_fiber is not None:
                identity = torch.tensor(ops.REDUCTIONS[stmt.reduce.op], dtype=value.dtype)
                value = torch.where(in_fiber.expand(space.shape), value, identity)
            value = _reduce(stmt.reduce.op, value, reduced)
        out_shape = space.shape[:kept]
        mask = all_of(present)
        if mask is not None:
            mask = mask.reshape(mask.shape[:kept]) if mask.dim() > kept else mask
            mask = mask.expand(out_shape)
            value = torch.where(mask, value, torch.zeros((), dtype=value.dtype))
        self.write(stmt, value.to(self.dtype), mask, fixed, slot)

    def write(self, stmt: Einsum, value, present, fixed, slot) -> None:  # type: ignore[no-untyped-def]
        if not fixed:
            self.store[stmt.target] = Stored(value.contiguous(), present)
            return
        (rank,) = fixed
        info = self.scope.tensors[stmt.target]
        axis = info.ranks.index(rank)
        if stmt.target not in self.store:
            shape = list(value.shape)
            shape[axis] = self.extent(rank) + (1 if info.generation is not None else 0)
            self.store[stmt.target] = Stored(
                torch.zeros(shape, dtype=self.dtype), torch.ones(shape, dtype=torch.bool)
            )
        stored = self.store[stmt.target]
        index = [slice(None)] * value.dim()
        index[axis] = slice(slot, slot + 1)
        stored.values[tuple(index)] = value
        assert stored.present is not None
        stored.present[tuple(index)] = True if present is None else present

    def run_iterate(self, block: Iterate) -> None:
        inits = [s for s in block.body if _is_init(s, block.rank)]
        for stmt in inits:
            self.run_einsum(stmt, {block.rank: 0}, 0)
        for step in range(self.extent(block.rank)):
            for stmt in block.body:
                if stmt in inits:
                    continue
                is_update = any(generation_index(i, block.rank) == "next" for i in stmt.indices)
                self.run_einsum(stmt, {block.rank: step}, step + 1 if is_update else step)

    def run(self) -> tuple[torch.Tensor, ...]:
        for stmt in self.cascade.body:
            if isinstance(stmt, Iterate):
                self.run_iterate(stmt)
            else:
                self.run_einsum(stmt, {}, None)
        results = []
        for name in self.cascade.outputs:
            stored = self.store[name]
            values = stored.values
            if stored.present is not None:
                values = torch.where(stored.present, values, torch.zeros((), dtype=values.dtype))
            results.append(values)
        return tuple(results)


def _is_integer(value: Value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point()
    return isinstance(value, int)


def _is_init(stmt: Einsum, rank: str) -> bool:
    return any(generation_index(i, rank) == "init" for i in stmt.indices)


def _reduce(op: str, value: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    if not dims:
        return value
    if op == "sum":
        return value.sum(dim=dims)
    return value.amax(dim=dims) if op == "max" else value.amin(dim=dims)


def _compute_dtype(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    return floating[0] if floating else torch.float32


def reference(cascade: Cascade, *, dtype: torch.dtype | None = None, **arguments: object):
    """Evaluate ``cascade`` densely. Tensors, parameters and unbound sizes go by name.

    Floating inputs are computed in ``dtype`` (default: the first floating input's dtype);
    integer inputs (lookup tables) keep theirs. Returns the single output, or a tuple.
    """
    tensors = {k: v for k, v in arguments.items() if isinstance(v, torch.Tensor)}
    scalars = {k: v for k, v in arguments.items() if not isinstance(v, torch.Tensor)}
    binding = bind(cascade, tensors, scalars)
    compute = _compute_dtype(tensors, dtype)
    executor = _Executor(cascade, binding, compute)
    for name, tensor in tensors.items():
        if cascade.input(name) is None:
            raise BindError(f"unknown input tensor {name!r}")
        converted = tensor.to(compute) if tensor.is_floating_point() else tensor
        executor.store[name] = Stored(converted, None)
    outputs = executor.run()
    return outputs[0] if len(outputs) == 1 else outputs
