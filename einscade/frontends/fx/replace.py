"""Replace a lifted site in the graph with one call of ``einscade::site``.

Inserted before the site's output (everything the call reads is defined by then):

- Q, K, V as the site reads them, through a ``permute`` where it reads a permutation (an
  einsum's operand order, or K^T given instead of K);
- the run-time bias: the sum of the terms the cascade did not absorb, each ``t * factor``
  or ``torch.where(mask, fill, 0)``;
- the call, and a ``permute`` of its output if an einsum wrote the output in another order.

The site's output is then read from the call and the nodes only the site read are removed.
New nodes get the ``example_value`` metadata Dynamo gives every node (computed on fake
tensors), so passes that read it, such as Inductor's, see a consistent graph.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Graph, GraphModule, Node
from torch.utils._pytree import tree_map

from einscade.frontends.fx import ops, runtime
from einscade.frontends.fx.constants import buffer_fingerprint
from einscade.frontends.fx.lift import Lifted
from einscade.frontends.fx.patterns import Operand, Term
from einscade.ir.errors import EinscadeError


def replace_site(gm: GraphModule, lifted: Lifted, run: runtime.SiteKernel) -> Node:
    """Swap the site for a call of ``run`` (registered here); returns the node that now
    holds the site's output."""
    match = lifted.match
    key = runtime.register(run)
    graph = gm.graph
    # The mode of the values the site reads (a backend's tracing context may hold another).
    fake_mode = getattr(ops.meta(match.q.node), "fake_mode", None)
    with graph.inserting_before(match.output):
        inserted: list[Node] = []
        q, k, v = (_operand(graph, x, inserted) for x in (match.q, match.k, match.v))
        bias = _bias(graph, lifted.bias_terms, match.scores_shape, inserted)
        guards = [buffer for buffer, _ in lifted.guards]
        call = graph.call_function(torch.ops.einscade.site.default, (q, k, v, bias, guards, key))
        inserted.append(call)
        out = call
        if match.out_perm is not None:
            out = graph.call_method("permute", (call, match.out_perm))
            inserted.append(out)
    try:
        propagate_fake(inserted, fake_mode)
    except Exception as error:  # the site stays as it was: undo the insertion
        for node in reversed(inserted):
            graph.erase_node(node)
        raise EinscadeError(f"the replacement call does not type-check: {error}") from error
    match.output.replace_all_uses_with(out)
    inner = set(match.inner)
    for node in reversed([n for n in graph.nodes if n in inner]):  # readers go first
        if not node.users:
            graph.erase_node(node)
    return out


def kernel_for(lifted: Lifted, target: str) -> runtime.SiteKernel:
    """The run-time record of a lifted site: its executor and what its call returns."""
    return runtime.SiteKernel(
        cascade=lifted.cascade,
        run=runtime.site_callable(lifted.cascade, target=target, device=_device(lifted)),
        kv_heads=lifted.match.kv_heads,
        compute_dtype=lifted.compute_dtype,
        out_dtype=lifted.out_dtype,
        lookups=lifted.lookups,
        guards=tuple((b.name, buffer_fingerprint(t)) for b, t in lifted.guards),
        zero_empty_rows=lifted.match.zero_empty_rows,
        label=lifted.summary,
    )


def _device(lifted: Lifted) -> str:
    value = ops.meta(lifted.match.q.node)
    return value.device.type if isinstance(value, torch.Tensor) else "cpu"


def _operand(graph: Graph, operand: Operand, inserted: list[Node]) -> Node:
    if operand.perm is None:
        return operand.node
    node = graph.call_method("permute", (operand.node, operand.perm))
    inserted.append(node)
    return node


def _bias(
    graph: Graph, terms: tuple[Term, ...], scores: tuple | None, inserted: list[Node]
) -> Node | None:
    total: Node | None = None
    for term in terms:
        node = _term(graph, term)
        if node is not term.node:
            inserted.append(node)
        if term.at is not None:  # added to another view of the scores: into the softmax's
            node = graph.call_method("expand", (node, term.at))
            inserted.append(node)
            node = graph.call_method("reshape", (node, scores))
            inserted.append(node)
        if total is not None:
            node = graph.call_function(operator.add, (total, node))
            inserted.append(node)
        total = node
    return total


def _term(graph: Graph, term: Term) -> Node:
    if term.kind == "add":
        if term.factor == 1.0:
            return term.node
        return graph.call_function(operator.mul, (term.node, term.factor))
    fill = term.fill * term.factor
    branches = (fill, 0.0) if term.kind == "fill_true" else (0.0, fill)
    return graph.call_function(torch.where, (term.node, *branches))


def propagate_fake(nodes: list[Node], fake_mode: object) -> None:
    """Give each new node Dynamo's ``example_value``, computed on the inputs' fake values."""
    if fake_mode is None:
        return
    with fake_mode:  # type: ignore[attr-defined]
        for node in nodes:
            if "example_value" in node.meta:
                continue
            args, kwargs = tree_map(_fake_of, (node.args, node.kwargs))
            if node.op == "call_method":
                value = getattr(args[0], str(node.target))(*args[1:], **kwargs)
            else:
                value = node.target(*args, **kwargs)
            node.meta["example_value"] = value


def _fake_of(arg: object) -> object:
    return ops.meta(arg) if isinstance(arg, Node) else arg
