"""Values of the graph that are known at compile time: masks built from ``arange`` comparisons,
``tril`` of ``ones``, a mask buffer of the module, a scale held in a one-element tensor.

A node is constant when everything it reads is: factory calls (``arange``, ``ones``,
``tensor``), ``get_attr`` tensors, and module buffers that need no gradient (mask buffers of
any dtype: timm's Swin keeps its shifted-window mask as a float buffer; index tables).
Parameters never are: they are weights, read at run time. Constants are computed
by running their subgraph on the real buffer values Dynamo passes as example inputs. Nothing
random, in-place or with symbolic sizes is evaluated, and nothing larger than
:data:`MAX_ELEMENTS`.

A buffer read this way is a promise that it does not change: :func:`buffer_fingerprint` and
the site's run-time check (``einscade.frontends.fx.runtime``) keep it.
"""

from __future__ import annotations

import math
import operator

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_flatten, tree_map

from einscade.frontends.fx import ops

MAX_ELEMENTS = 1 << 22  # a constant mask of 2048 x 2048; larger ones stay run-time tensors

_NONDETERMINISTIC = frozenset(
    {
        "rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm",
        "normal", "bernoulli", "multinomial", "poisson", "dropout", "empty", "empty_like",
        "empty_strided", "new_empty", "uniform_", "normal_",
    }
)  # fmt: skip
# In place: operator's ``i*`` functions; ``and_``, ``or_`` and ``not_`` are not.
_SIDE_EFFECTS = frozenset(
    {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
     operator.iand, operator.ior, operator.ixor}
)  # fmt: skip


class Constants:
    """Lazily evaluated compile-time values of one graph, and the buffers each one reads."""

    def __init__(self, gm: GraphModule, example_inputs: list[object]):
        self._gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self._inputs = dict(zip(placeholders, example_inputs, strict=False))
        self._memo: dict[Node, object] = {}
        self._unknown: set[Node] = set()

    def value(self, node: object) -> torch.Tensor | None:
        """The tensor ``node`` always computes, or None if it depends on run-time data."""
        result = self._evaluate(node)
        return result if isinstance(result, torch.Tensor) else None

    def scalar(self, arg: object) -> float | None:
        """A Python number, or a constant one-element tensor, as a float."""
        if isinstance(arg, bool):
            return None
        if isinstance(arg, int | float):
            return float(arg)
        tensor = self.value(arg)
        if tensor is None or tensor.numel() != 1 or tensor.dtype == torch.bool:
            return None
        return float(tensor.reshape(()))

    def example(self, node: Node) -> object:
        """The real value Dynamo passed for a placeholder."""
        return self._inputs[node]

    def buffers(self, node: Node) -> tuple[Node, ...]:
        """The buffer placeholders a constant ``node`` was computed from, in graph order."""
        seen: set[Node] = set()
        stack = [node]
        found = []
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current.op == "placeholder":
                found.append(current)
            stack.extend(current.all_input_nodes)
        return tuple(n for n in self._gm.graph.nodes if n in found)

    def _evaluate(self, node: object) -> object:
        if not isinstance(node, Node):
            return None
        order = self._dependencies(node)
        if order is None:
            return None
        for current in order:
            self._memo[current] = self._run(current)
        return self._memo[node]

    def _dependencies(self, root: Node) -> list[Node] | None:
        """The not-yet-evaluated nodes ``root`` needs, in graph order; None if one is not
        constant."""
        needed: set[Node] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if node in self._memo or node in needed:
                continue
            if node in self._unknown or not self._may_be_constant(node):
                self._unknown.add(root)
                return None
            needed.add(node)
            stack.extend(node.all_input_nodes)
        return [n for n in self._gm.graph.nodes if n in needed]

    def _may_be_constant(self, node: Node) -> bool:
        if node.op == "get_attr":
            return True
        if node.op == "placeholder":
            return _is_constant_buffer(node, self._inputs.get(node))
        if node.op not in ("call_function", "call_method") or node.target in _SIDE_EFFECTS:
            return False
        target = node.target
        label = target if isinstance(target, str) else getattr(target, "__name__", "")
        in_place = label.endswith("_") and not label.endswith("__")
        in_place = in_place and getattr(target, "__module__", "") != "_operator"
        if label in _NONDETERMINISTIC or in_place:
            return False  # random, or in place (x.add_, torch.relu_)
        if "out" in node.kwargs or _has_symbols((node.args, node.kwargs)):
            return False
        return _small(ops.meta(node))

    def _run(self, node: Node) -> object:
        if node.op == "placeholder":
            return self._inputs[node]
        if node.op == "get_attr":
            return _fetch(self._gm, str(node.target))
        args, kwargs = tree_map(self._lookup, (node.args, node.kwargs))
        with torch.no_grad():
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            return node.target(*args, **kwargs)

    def _lookup(self, arg: object) -> object:
        return self._memo[arg] if isinstance(arg, Node) else arg


def buffer_fingerprint(tensor: torch.Tensor) -> tuple[int, int]:
    """(storage address, version counter): changes when the buffer is replaced or written."""
    return tensor.data_ptr(), tensor._version


def _is_constant_buffer(node: Node, value: object) -> bool:
    if not isinstance(value, torch.Tensor) or is_fake(value):
        return False
    if value.is_complex():
        return False
    if value.numel() > MAX_ELEMENTS or value.requires_grad:
        return False
    source = getattr(node.meta.get("grapharg"), "source", None)
    while source is not None:
        if getattr(source, "member", None) == "_buffers":
            return True
        source = getattr(source, "base", None)
    return False


def _has_symbols(tree: object) -> bool:
    leaves, _ = tree_flatten(tree)
    return any(isinstance(x, torch.SymInt | torch.SymFloat | torch.SymBool) for x in leaves)


def _small(value: object) -> bool:
    """Tensors of static shape up to MAX_ELEMENTS; scalars and tuples of them."""
    leaves, _ = tree_flatten(value)
    for leaf in leaves:
        if isinstance(leaf, torch.SymInt | torch.SymFloat | torch.SymBool):
            return False
        if isinstance(leaf, torch.Tensor):
            dims = [ops.static(d) for d in leaf.shape]
            if None in dims or math.prod(dims) > MAX_ELEMENTS:
                return False
    return True


def _fetch(gm: GraphModule, target: str) -> object:
    value: object = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value
