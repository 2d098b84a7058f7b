"""Binding run-time tensors to a cascade: sizes from shapes, size definitions, parameters.

Shared by every executor (reference, torch lowering, Triton launchers) so that they agree
on what a shape or a missing parameter means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from einscade.ir.cascade import Cascade, size_symbol
from einscade.ir.errors import BindError
from einscade.ir.expr import Binary, Call, Expr, Name, Num, Unary
from einscade.ir.scope import Scope


@dataclass(frozen=True, slots=True)
class Binding:
    """Concrete sizes and parameter values for one call, plus which input dims broadcast."""

    sizes: dict[str, int]
    params: dict[str, int | float]
    broadcast: dict[str, frozenset[int]]  # input name -> dims of extent 1 that broadcast


_SCALAR_FUNCS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "abs": abs}


def eval_scalar(expr: Expr, env: dict[str, int | float]) -> int | float:
    """Evaluate a size or parameter expression (no ranks, no tensors)."""
    match expr:
        case Num(value=v):
            return v
        case Name(id=name):
            if name not in env:
                raise BindError(f"{name!r} is not bound; pass {name}=... ")
            return env[name]
        case Unary(op="-", operand=x):
            return -eval_scalar(x, env)
        case Binary(op=op, lhs=a, rhs=b):
            return _arith(op, eval_scalar(a, env), eval_scalar(b, env))
        case Call(fn=fn, args=args) if fn in ("min", "max"):
            values = [eval_scalar(a, env) for a in args]
            return min(values) if fn == "min" else max(values)
        case Call(fn=fn, args=(arg,)) if fn in _SCALAR_FUNCS:
            return _SCALAR_FUNCS[fn](eval_scalar(arg, env))
    raise BindError(f"cannot evaluate {expr!r} as a constant")


def _arith(op: str, a: int | float, b: int | float) -> int | float:
    match op:
        case "+":
            return a + b
        case "-":
            return a - b
        case "*":
            return a * b
        case "/":
            return a / b
        case "//":
            return a // b
        case "%":
            return a % b
    raise BindError(f"operator {op!r} is not allowed in a size or parameter expression")


def _bind_shapes(cascade: Cascade, tensors: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    extents: dict[str, list[tuple[int, str]]] = {}
    for decl in cascade.inputs:
        if decl.name not in tensors:
            raise BindError(f"missing input tensor {decl.name!r}")
        shape = tuple(tensors[decl.name].shape)
        if len(shape) != len(decl.ranks):
            ranks = ", ".join(decl.ranks)
            raise BindError(
                f"input {decl.name!r} has {len(shape)} dims {list(shape)}, "
                f"the cascade declares {len(decl.ranks)} [{ranks}]"
            )
        for rank, extent in zip(decl.ranks, shape, strict=True):
            extents.setdefault(size_symbol(rank), []).append((extent, decl.name))
    sizes: dict[str, int] = {}
    broadcast: dict[str, set[int]] = {d.name: set() for d in cascade.inputs}
    for symbol, seen in extents.items():
        size = max(extent for extent, _ in seen)
        for extent, name in seen:
            if extent not in (size, 1):
                other = next(n for e, n in seen if e == size)
                raise BindError(f"size {symbol} is {size} from {other} but {extent} from {name}")
        sizes[symbol] = size
    for decl in cascade.inputs:
        for dim, rank in enumerate(decl.ranks):
            if tensors[decl.name].shape[dim] == 1 and sizes[size_symbol(rank)] != 1:
                broadcast[decl.name].add(dim)
    return sizes, {k: frozenset(v) for k, v in broadcast.items()}


def bind(cascade: Cascade, tensors: dict[str, torch.Tensor], extra: dict[str, object]) -> Binding:
    """Bind sizes (shapes, then ``size`` definitions, grids, keyword sizes) and parameters."""
    scope = Scope(cascade)
    sizes, broadcast = _bind_shapes(cascade, tensors)
    for name, value in extra.items():
        if name in scope.sizes and name not in sizes:
            sizes[name] = int(value)  # type: ignore[call-overload]
    for size in cascade.sizes:
        value = int(eval_scalar(size.value, dict(sizes)))
        if size.name in sizes and sizes[size.name] != value:
            raise BindError(f"size {size.name} = {value} by its definition but {sizes[size.name]}")
        sizes[size.name] = value
    for grid in cascade.grids:
        symbol = size_symbol(grid.rank)
        axes = [size_symbol(a) for a in grid.axes]
        missing = [a for a in axes if a not in sizes]
        if missing:
            raise BindError(f"grid {grid.rank} = ({', '.join(grid.axes)}) needs size {missing[0]}")
        product = math.prod(sizes[a] for a in axes)
        if sizes.setdefault(symbol, product) != product:
            shape = " x ".join(str(sizes[a]) for a in axes)
            raise BindError(f"size {symbol} is {sizes[symbol]} but grid {grid.rank} is {shape}")
    return Binding(sizes, _bind_params(cascade, sizes, extra), broadcast)


def _bind_params(cascade: Cascade, sizes: dict[str, int], extra: dict[str, object]):  # type: ignore[no-untyped-def]
    env: dict[str, int | float] = dict(sizes)
    params: dict[str, int | float] = {}
    for param in cascade.params:
        if param.name in extra:
            raw = extra[param.name]
            value: int | float = int(raw) if param.kind == "int" else float(raw)  # type: ignore[arg-type]
        elif param.default is not None:
            value = eval_scalar(param.default, env)
            value = int(value) if param.kind == "int" else float(value)
        else:
            raise BindError(f"missing parameter {param.name!r} ({param.kind})")
        params[param.name] = value
        env[param.name] = value
    unknown = set(extra) - set(params) - {s for s in sizes}
    if unknown:
        raise BindError(f"unknown argument {sorted(unknown)[0]!r}")
    return params
