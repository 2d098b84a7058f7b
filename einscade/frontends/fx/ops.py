"""One name per operation, whichever way the Dynamo graph spells it.

Dynamo records what the Python code called: ``q @ k`` is ``operator.matmul``, ``q.matmul(k)``
a ``call_method``, ``torch.bmm`` a function; ``F.softmax``, ``torch.softmax`` and
``x.softmax`` are three targets. :func:`kind` maps each spelling to one name, and the
accessors below read arguments by name wherever the spelling put them, so the matcher in
:mod:`einscade.frontends.fx.patterns` is written once per operation.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.fx import Node

_FUNCTIONS: dict[object, str] = {
    torch.matmul: "matmul",
    operator.matmul: "matmul",
    torch.bmm: "matmul",
    torch.einsum: "einsum",
    torch.softmax: "softmax",
    F.softmax: "softmax",
    torch.special.softmax: "softmax",
    F.scaled_dot_product_attention: "sdpa",
    F.dropout: "dropout",
    torch.dropout: "dropout",
    operator.mul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
    torch.div: "div",
    operator.add: "add",
    torch.add: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    torch.masked_fill: "masked_fill",
    torch.where: "where",
    torch.transpose: "transpose",
    torch.permute: "permute",
    torch.reshape: "reshape",
    torch.unsqueeze: "unsqueeze",
    torch.repeat_interleave: "repeat_interleave",
    operator.getitem: "getitem",
}

_METHODS: dict[str, str] = {
    "matmul": "matmul",
    "bmm": "matmul",
    "__matmul__": "matmul",
    "softmax": "softmax",
    "mul": "mul",
    "div": "div",
    "add": "add",
    "sub": "sub",
    "masked_fill": "masked_fill",
    "transpose": "transpose",
    "permute": "permute",
    "view": "reshape",
    "reshape": "reshape",
    "expand": "expand",
    "unsqueeze": "unsqueeze",
    "repeat_interleave": "repeat_interleave",
    "contiguous": "contiguous",
    # Conversions: whether one changes the dtype is read off the graph's example values.
    "to": "cast",
    "type": "cast",
    "type_as": "cast",
    "float": "cast",
    "half": "cast",
    "bfloat16": "cast",
    "double": "cast",
}


def kind(node: object) -> str | None:
    """The operation's one name ("matmul", "softmax", ...), or None for anything else."""
    if not isinstance(node, Node):
        return None
    if node.op == "call_function":
        return _FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _METHODS.get(str(node.target))
    return None


def arg(node: Node, index: int, name: str, default: object = None) -> object:
    """Argument ``name`` of a call, positional at ``index`` (self counts for methods)."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if index < len(node.args) else default


def meta(node: object) -> object:
    """The example value Dynamo recorded for a node (a FakeTensor for tensors)."""
    return node.meta.get("example_value") if isinstance(node, Node) else None


def shape(node: object) -> tuple | None:
    value = meta(node)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def rank(node: object) -> int | None:
    dims = shape(node)
    return None if dims is None else len(dims)


def dtype(node: object) -> torch.dtype | None:
    value = meta(node)
    return value.dtype if isinstance(value, torch.Tensor) else None


def static(dim: object) -> int | None:
    """A dimension as an int, or None while it is symbolic (dynamic shapes)."""
    return dim if isinstance(dim, int) else None


def name(node: object) -> str:
    return node.name if isinstance(node, Node) else repr(node)


def is_identity_dropout(node: Node) -> bool:
    """``F.dropout(x, p, training=False)`` or ``p == 0``: the identity (eval mode)."""
    if node.target is torch.dropout:
        p, training = arg(node, 1, "p", 0.5), arg(node, 2, "train", True)
    else:
        p, training = arg(node, 1, "p", 0.5), arg(node, 2, "training", True)
    return training is False or p == 0


def is_cast(node: Node) -> bool:
    """A conversion that keeps shape and device (only the dtype may change)."""
    source, out = meta(node.args[0]) if node.args else None, meta(node)
    if not isinstance(source, torch.Tensor) or not isinstance(out, torch.Tensor):
        return False
    return source.shape == out.shape and source.device == out.device


def transpose_perm(node: Node) -> tuple[int, ...] | None:
    """The permutation a ``transpose`` or ``permute`` node applies, dims made non-negative."""
    n = rank(node)
    if n is None:
        return None
    if kind(node) == "transpose":
        d0, d1 = (arg(node, 1, "dim0"), arg(node, 2, "dim1"))
        if not isinstance(d0, int) or not isinstance(d1, int):
            return None
        perm = list(range(n))
        perm[d0 % n], perm[d1 % n] = perm[d1 % n], perm[d0 % n]
        return tuple(perm)
    if kind(node) == "permute":
        dims = node.args[1:] if node.op == "call_method" else (arg(node, 1, "dims"),)
        if len(dims) == 1 and isinstance(dims[0], Sequence):
            dims = tuple(dims[0])
        if not all(isinstance(d, int) for d in dims) or len(dims) != n:
            return None
        return tuple(d % n for d in dims)
    return None


def swap_last_two(perm: Sequence[int]) -> tuple[int, ...]:
    return (*perm[:-2], perm[-1], perm[-2])


def is_identity(perm: Sequence[int] | None) -> bool:
    return perm is None or tuple(perm) == tuple(range(len(perm)))
