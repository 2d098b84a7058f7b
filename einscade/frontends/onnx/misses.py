"""Why a Softmax is not part of any site: the best partial match and its reason.

The reason is onnxscript's (``MatchResult.reason`` and failure nodes of the best partial
match that ``MatchingTracer`` kept), or ours when we can say more: the values that escape a
structural match, or the op that feeds the Softmax where a chain needs scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx_ir as ir
from onnxscript.rewriter import pattern

from einscade.frontends.onnx.patterns import FAMILIES
from einscade.frontends.onnx.shapes import node_name

# Ops allowed between the Softmax and the MatMul with V when looking for a near miss.
_PASS_THROUGH = frozenset({"Where", "IsNaN", "Cast", "Dropout", "Identity"})
# Ops that may produce the Softmax input in a recognised chain.
_SCORE_OPS = frozenset({"MatMul", "Mul", "Div", "Add", "Cast"})


@dataclass(frozen=True)
class Miss:
    """A Softmax that is not part of any site, and why."""

    container: str
    node: str
    reason: str
    near: tuple[str, ...]  # names of the nodes or values the failure points at


def find_misses(model, label, container, claimed: set[ir.Node]) -> Iterator[Miss]:
    for node in container:
        if node.op_type == "Softmax" and node not in claimed:
            reason, near = _diagnose(model, container, node)
            yield Miss(label, node_name(node), reason, near)


def _diagnose(model, container, softmax: ir.Node) -> tuple[str, tuple[str, ...]]:
    """Why no pattern matched around this Softmax, from the best partial match."""
    roots = _candidate_roots(softmax)
    if not roots:
        users = sorted({use.node.op_type for use in softmax.outputs[0].uses()})
        return (
            f"Softmax output is not multiplied by V (it feeds {', '.join(users) or 'nothing'})",
            (),
        )
    for root in roots:
        escaping = _escaping_values(model, container, root)
        if escaping:
            return f"intermediate values are used outside the chain: {', '.join(escaping)}", ()
    scores = softmax.inputs[0].producer()
    if scores is not None and scores.op_type not in _SCORE_OPS:
        # The matcher's own words ("None of the alternatives matched") say less than this.
        return (
            f"the scores reach the Softmax from {scores.op_type} {node_name(scores)}; a chain "
            "needs MatMul(Q, K^T) [Mul/Div scale] [Add mask] [Cast] there",
            (f"{scores.op_type} {node_name(scores)}",),
        )
    tracer = pattern.MatchingTracer()
    for root in roots:
        for variant in FAMILIES[0][1]:
            variant.match(model, container, root, tracer=tracer)
    best = max(
        (info for infos in tracer.best_matches_map.values() for info in infos),
        key=lambda info: info.score(),
        default=None,
    )
    if best is None:
        return "no attention pattern starts at the MatMul after this Softmax", ()
    result = best.match_result
    near = tuple(_display(x) for x in result.failure_nodes_and_values)
    return result.reason or "the graph around it differs from every known form", near


def _candidate_roots(softmax: ir.Node) -> list[ir.Node]:
    """MatMul nodes that read the Softmax output (through guards and casts) as the weights."""
    roots, frontier = [], [softmax.outputs[0]]
    for _ in range(4):
        nxt = []
        for value in frontier:
            for use in value.uses():
                if use.node.op_type == "MatMul" and use.idx == 0:
                    roots.append(use.node)
                elif use.node.op_type in _PASS_THROUGH:
                    nxt.extend(use.node.outputs)
        frontier = nxt
    return list(dict.fromkeys(roots))


def _escaping_values(model, container, root: ir.Node) -> list[str]:
    """Values inside a structural match that something outside the match also reads."""
    for variant in FAMILIES[0][1]:
        match = variant.match(model, container, root, check_nodes_are_removable=False)
        if match:
            nodes = list(dict.fromkeys(match.nodes))  # the matcher may list a node twice
            inside = set(nodes)
            return [
                _escape_text(value, inside)
                for node in nodes
                if node is not root
                for value in node.outputs
                if value.is_graph_output() or any(u.node not in inside for u in value.uses())
            ]
    return []


def _escape_text(value: ir.Value, inside: set[ir.Node]) -> str:
    if value.is_graph_output():
        return f"'{value.name}' is a graph output"
    users = [node_name(u.node) for u in value.uses() if u.node not in inside]
    return f"'{value.name}' is also read by {', '.join(users)}"


def _display(item: ir.Node | ir.Value) -> str:
    if isinstance(item, ir.Node):
        return f"{item.op_type} {node_name(item)}"
    return f"value '{item.name}'"
