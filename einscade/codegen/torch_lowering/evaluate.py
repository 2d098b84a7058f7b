"""Evaluate IR expressions on gathered tiles by broadcasting.

The lowering evaluates two kinds of expression on a block of (query, key) pairs: mask
predicates (once per layout, for the partial tiles only) and score maps such as
soft-capping, an additive bias or ALiBi (every call). Names are bound to coordinate
tensors shaped to broadcast against the block (query tokens along one axis, key tokens
along another), to parameters and to sizes. Reads of input tensors gather; an index
outside the tensor is an absent point (IR semantics), reported in :attr:`absent` so the
caller can mask it out; a dimension of extent 1 broadcasts.
"""

from __future__ import annotations

import torch

from einscade.codegen.torch_ops import TORCH_BINARY, TORCH_UNARY
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary
from einscade.ir.printer import print_expr
from einscade.passes.analysis.masks import Axes

Value = torch.Tensor | int | float


def coordinates(axes: Axes, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The flat rank and each grid axis of row-major ``tokens`` (any shape)."""
    env = {axes.flat: tokens}
    for name, extent, stride in zip(axes.names, axes.extents, axes.strides, strict=True):
        if name != axes.flat:
            env[name] = (tokens // stride) % extent
    return env


class Evaluator:
    """Evaluates expressions over ``env`` (names) and ``tensors`` (reads), floats in
    ``dtype``. Conditions under which reads stayed inside their tensors accumulate in
    ``absent`` (as "inside" masks: a point is present where all of them hold)."""

    def __init__(
        self,
        env: dict[str, Value],
        tensors: dict[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
    ):
        self.env = env
        self.tensors = tensors
        self.dtype = dtype
        self.absent: list[torch.Tensor] = []

    def __call__(self, expr: Expr) -> Value:
        match expr:
            case Num(value=v):
                return v
            case Name(id=name):
                if name not in self.env:
                    raise ValueError(f"torch lowering: {name!r} is not bound in {print_expr(expr)}")
                return self.env[name]
            case Unary(op="not", operand=x):
                return ~torch.as_tensor(self(x))
            case Unary(op="-", operand=x):
                return -self(x)  # type: ignore[operator]
            case Binary(op=op, lhs=a, rhs=b):
                return TORCH_BINARY[op](self(a), self(b))  # type: ignore[no-untyped-call]
            case Call(fn=fn, args=args):
                return self.call(fn, [self(a) for a in args])
            case Access():
                return self.read(expr)
        raise ValueError(f"torch lowering: cannot evaluate {print_expr(expr)}")

    def float_tensor(self, value: Value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value if value.is_floating_point() else value.to(self.dtype)
        return torch.tensor(value, dtype=self.dtype)

    def call(self, fn: str, args: list[Value]) -> Value:
        if fn in TORCH_UNARY:
            return TORCH_UNARY[fn](self.float_tensor(args[0]))
        if fn in ("max", "min"):
            a, b = args
            if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
                return max(a, b) if fn == "max" else min(a, b)
            pick = torch.maximum if fn == "max" else torch.minimum
            if _integral(a) and _integral(b):
                return pick(torch.as_tensor(a), torch.as_tensor(b))
            return pick(self.float_tensor(a), self.float_tensor(b))
        if fn == "where":
            cond, a, b = args
            return torch.where(torch.as_tensor(cond), self.float_tensor(a), self.float_tensor(b))
        raise ValueError(f"torch lowering: unknown function {fn!r}")

    def read(self, node: Access) -> torch.Tensor:
        """Gather ``node`` by broadcasting its indices; out-of-range reads go to ``absent``."""
        if node.tensor not in self.tensors:
            raise ValueError(f"torch lowering: {print_expr(node)} reads an unbound tensor")
        table = self.tensors[node.tensor]
        gathers = []
        for dim, index in enumerate(node.indices):
            extent = table.shape[dim]
            raw = torch.as_tensor(self(index), dtype=torch.long)
            if extent == 1:
                gathers.append(torch.zeros_like(raw))
                continue
            inside = (raw >= 0) & (raw < extent)
            if not bool(inside.all()):
                self.absent.append(inside)
            gathers.append(raw.clamp(0, extent - 1))
        return table[tuple(gathers)]


def _integral(value: Value) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point()
    return isinstance(value, int)
