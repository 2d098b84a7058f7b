"""Names and shapes as the reports print them, and dim comparisons the checks share."""

from __future__ import annotations

import onnx_ir as ir


def node_name(node: ir.Node) -> str:
    """The node's name, or ``<OpType>`` for an unnamed node."""
    return node.name or f"<{node.op_type}>"


def dim_text(dim) -> str:
    if isinstance(dim, int):
        return str(dim)
    return str(dim.value) if dim.value is not None else "?"


def shape_text(shape: ir.Shape | None) -> str:
    """``[2, B, 6, 8]``; ``?`` for an unknown rank or dim."""
    return "?" if shape is None else "[" + ", ".join(dim_text(d) for d in shape) + "]"


def same_dim(a, c) -> bool:
    """Equal static sizes, or the same named symbolic size (unknown sizes never compare)."""
    if isinstance(a, int) or isinstance(c, int):
        return a == c
    return a.value is not None and a.value == c.value


def escapes(node: ir.Node, inside: set[ir.Node]) -> bool:
    """Some output of ``node`` is a graph output or is read by a node outside ``inside``."""
    return any(
        out.is_graph_output() or any(use.node not in inside for use in out.uses())
        for out in node.outputs
    )
