"""Rewrite attention sites in place: a local function carrying the cascade, or an Attention op.

``function``: each site's nodes move, unchanged, into a model-local function of domain
``einscade`` whose attribute ``cascade`` holds the printed cascade; the graph calls it. Any
runtime still runs the original computation, and a compiler can read the cascade.

``onnx-attention``: each site the standard opset-23 ``Attention`` op expresses becomes one
``Attention`` node (``scale`` is the product of the chain's scale factors; a 3-D chain is
unsqueezed to 4-D and back). Sites it cannot express are kept, with the reason.

``ort``: onnxruntime's com.microsoft ``MultiHeadAttention`` (or ``GroupQueryAttention`` for
grouped KV heads and soft-capping), see :mod:`einscade.frontends.onnx.ort`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from einscade.frontends.onnx.layouts import (
    FLOATS,
    Emitter,
    dropped_mask,
    fused_op_checks,
    head_blockers,
    mask_blockers,
)
from einscade.frontends.onnx.opset import ATTENTION_OPSET
from einscade.frontends.onnx.ort import MS_DOMAIN, OrtPlan, ort_nodes, ort_plan
from einscade.frontends.onnx.sites import Site
from einscade.ir.printer import print_cascade

DOMAIN = "einscade"
MODES = ("function", "onnx-attention", "ort")


@dataclass(frozen=True)
class Decision:
    """What happened to one site."""

    site: Site
    rewritten: bool
    action: str  # "function einscade::softmax_attention_0", "Attention (opset 23)", "kept"
    reason: str  # why it was kept, or a remark on the rewrite


def rewrite_sites(model: ir.Model, sites: tuple[Site, ...], mode: str) -> tuple[Decision, ...]:
    """Rewrite ``sites`` of ``model`` (modified in place) in ``mode``; one decision per site."""
    if mode not in MODES:
        raise ValueError(f"rewrite mode {mode!r} is not one of {', '.join(MODES)}")
    # Read before rewriting: removed nodes lose their inputs.
    outer = {site.index: _outer_inputs(site) for site in sites}
    containers = dict(containers_of(model))
    decisions = []
    for site in sites:
        container = containers[site.container]
        blocked = _blocker(site, container, mode)
        if blocked is not None:
            decisions.append(Decision(site, False, "kept", blocked))
        elif mode == "function":
            decisions.append(_wrap_in_function(model, container, site))
        elif mode == "ort":
            decisions.append(_to_ort(model, container, site))
        else:
            decisions.append(_to_attention_op(container, site))
    for decision in (d for d in decisions if d.rewritten):
        site = decision.site
        shared = (o for n in site.values.shared for o in n.outputs)
        _drop_dead_values(containers[site.container], [*outer[site.index], *shared])
    return tuple(decisions)


def containers_of(model: ir.Model) -> list[tuple[str, ir.Graph | ir.Function]]:
    """(label, graph or function) as sites name their container."""
    functions = [(f"function {f.domain}::{f.name}", f) for f in model.functions.values()]
    return [("graph", model.graph), *functions]


def _blocker(site: Site, container: ir.Graph | ir.Function, mode: str) -> str | None:
    """Why no mode rewrites ``site``, or None."""
    if site.unsupported:
        return f"the cascade does not describe what the op computes: {'; '.join(site.unsupported)}"
    if _extra_outputs_used(site):
        return "its present_key/present_value or qk outputs are used (not wrapped yet)"
    if mode == "function" and isinstance(container, ir.Function) and container.domain == DOMAIN:
        return f"already inside {DOMAIN}::{container.name}"
    return None


def _extra_outputs_used(site: Site) -> bool:
    """A node to be removed has an output besides the site's that others read."""
    moved = [n for n in site.values.nodes if n not in site.values.shared]
    outputs = [o for n in moved for o in n.outputs if o is not site.values.output]
    inside = set(site.values.nodes)
    return any(o.is_graph_output() or any(u.node not in inside for u in o.uses()) for o in outputs)


# -- function mode ---------------------------------------------------------------------------


def _wrap_in_function(model: ir.Model, container: ir.Graph | ir.Function, site: Site) -> Decision:
    nodes = site.values.nodes
    outer = _outer_inputs(site)
    # Small constants (scales, reshape shapes) go inside: a function's inputs carry no shape,
    # and a re-import must see the scale is a scalar. Large ones (masks) stay inputs.
    inner = [v for v in outer if _small_constant(v) and v not in _roles(site)]
    outer = [v for v in outer if v not in inner]
    name = _fresh_function_name(model, f"{site.cascade.name}_{site.index}")
    text = cascade_text(site)
    formal = {v: ir.Value(name=v.name, shape=v.shape, type=v.type) for v in outer}
    constants = [_constant_node(v) for v in inner]
    formal.update({v: node.outputs[0] for v, node in zip(inner, constants, strict=True)})
    body, mapping = _copy_nodes(nodes, formal)
    domains = {n.domain for n in nodes} | {""}
    opsets = {d: v for d, v in _opsets(model, container).items() if d in domains}
    body_graph = ir.Graph(
        [formal[v] for v in outer], [mapping[site.values.output]], nodes=constants + body,
        opset_imports=opsets,
    )  # fmt: skip
    cascade_attr = ir.Attr("cascade", ir.AttributeType.STRING, text)
    function = ir.Function(DOMAIN, name, graph=body_graph, attributes=[cascade_attr])
    model.functions[function.identifier()] = function
    model.opset_imports.setdefault(DOMAIN, 1)
    container.opset_imports.setdefault(DOMAIN, 1)  # a function calling ours imports it too
    call = ir.Node(
        DOMAIN, name, outer, [ir.Attr("cascade", ir.AttributeType.STRING, text)],
        num_outputs=1, name=f"einscade_{name}",
    )  # fmt: skip
    # onnx infers no types through contrib ops in a function body: state the output's.
    output = site.values.output
    dtype = site.values.query.dtype
    call.outputs[0].type = output.type or (ir.TensorType(dtype) if dtype is not None else None)
    call.outputs[0].shape = output.shape
    _replace(container, site, [call], call.outputs[0])
    return Decision(site, True, f"function {DOMAIN}::{name}", f"{len(nodes)} nodes wrapped")


def cascade_text(site: Site) -> str:
    """The printed cascade, after a comment naming a recognised constant mask's family."""
    text = print_cascade(site.cascade)
    if site.mask_family is None:
        return text
    return f"# mask '{site.mask}': {site.mask_family}, recognised from the constant\n{text}"


def _roles(site: Site) -> tuple[ir.Value, ...]:
    v = site.values
    return tuple(x for x in (v.query, v.key, v.value, v.mask) if x is not None)


def _opsets(model: ir.Model, container: ir.Graph | ir.Function) -> dict[str, int]:
    """The opsets nodes of ``container`` see (a function's own imports win)."""
    return {**model.opset_imports, **container.opset_imports}


def _small_constant(value: ir.Value) -> bool:
    """An initializer (not a graph input) or Constant output of at most 64 elements."""
    tensor = _constant_tensor(value)
    return tensor is not None and tensor.size <= 64 and not value.is_graph_input()


def _constant_tensor(value: ir.Value):
    """The tensor of an initializer or of a Constant node's ``value``, else None."""
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or producer.domain not in ("", "ai.onnx"):
        return None
    attr = producer.attributes.get("value")
    return None if attr is None or attr.is_ref() else attr.value


def _constant_node(value: ir.Value) -> ir.Node:
    tensor = ir.tensor(_constant_tensor(value).numpy())  # read now: the input's file stays
    node = ir.Node("", "Constant", [], [ir.AttrTensor("value", tensor)], name=value.name)
    node.outputs[0].name, node.outputs[0].type = value.name, value.type
    node.outputs[0].shape = value.shape
    return node


def _outer_inputs(site: Site) -> list[ir.Value]:
    """Values the site reads from outside: Q, K, V, mask first, then the rest in use order."""
    inside = set(site.values.nodes)
    found: list[ir.Value] = []
    for node in site.values.nodes:
        for value in node.inputs:
            if value is not None and value.producer() not in inside and value not in found:
                found.append(value)
    roles = list(dict.fromkeys(x for x in _roles(site) if x in found))  # Q, K, V may coincide
    return roles + [x for x in found if x not in roles]


def _copy_nodes(nodes, formal: dict[ir.Value, ir.Value]) -> tuple[list[ir.Node], dict]:
    """Copies of ``nodes`` reading the formal inputs; outputs keep names, types and shapes."""
    mapping: dict[ir.Value, ir.Value] = dict(formal)
    copies = []
    for node in nodes:
        inputs = [mapping.get(v) if v is not None else None for v in node.inputs]
        copy = ir.Node(
            node.domain, node.op_type, inputs,
            list(node.attributes.values()), num_outputs=len(node.outputs), name=node.name,
            overload=node.overload,
        )  # fmt: skip
        for old, new in zip(node.outputs, copy.outputs, strict=True):
            new.name, new.type, new.shape = old.name, old.type, old.shape
            mapping[old] = new
        copies.append(copy)
    return copies, mapping


def _fresh_function_name(model: ir.Model, base: str) -> str:
    taken = {(f.domain, f.name) for f in model.functions.values()}
    name, k = base, 1
    while (DOMAIN, name) in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _replace(graph, site: Site, new_nodes: list[ir.Node], new_output: ir.Value) -> None:
    """Swap the site's nodes for ``new_nodes``; the new output takes the old name and uses.

    Shared nodes stay for their other readers (the new nodes hold copies of them)."""
    nodes = [n for n in site.values.nodes if n not in site.values.shared]
    ir.convenience.replace_nodes_and_values(
        graph, nodes[-1], nodes, new_nodes, [site.values.output], [new_output]
    )


# -- onnx-attention mode ---------------------------------------------------------------------


def expressible(site: Site) -> bool:
    """Whether the standard Attention op can replace this site."""
    return not attention_blockers(site)


def attention_blockers(site: Site) -> list[str]:
    """Why the standard Attention op cannot express this site ([] if it can)."""
    if site.family == "attention-op":
        return ["already a standard Attention op"]
    if site.family.startswith("ms-"):
        return ["a com.microsoft op: kept as it is"]
    reasons, shapes = fused_op_checks(site, "Attention takes", FLOATS)
    if shapes is None:
        return reasons
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1 or ranks.pop() not in (3, 4):
        return [*reasons, f"Q, K, V have ranks {[len(s) for s in shapes]} (Attention takes 4-D)"]
    reasons += head_blockers(*shapes)
    if dropped_mask(site) is None:
        reasons += mask_blockers(site)
    return reasons


def _to_attention_op(container: ir.Graph | ir.Function, site: Site) -> Decision:
    blockers = attention_blockers(site)
    if blockers:
        return Decision(site, False, "kept", "; ".join(blockers))
    new_nodes, output = _attention_nodes(site)
    _replace(container, site, new_nodes, output)
    # Without SDPA's IsNaN guard a row whose mask hides every key gave NaN; Attention gives 0.
    return Decision(site, True, f"Attention (opset {ATTENTION_OPSET})", mask_remark(site))


def mask_remark(site: Site) -> str:
    """What became of the site's mask in a fused op."""
    dropped = dropped_mask(site)
    if dropped is not None:
        return {"causal": "constant causal mask -> causal flag",
                "nothing": "constant mask hides nothing: dropped"}[dropped]  # fmt: skip
    # Without SDPA's IsNaN guard a row whose mask hides every key gave NaN; the ops give 0.
    guarded = any("IsNaN" in note for note in site.notes)
    return "" if guarded or site.mask is None else "rows masked entirely by -inf give 0, not NaN"


def _to_ort(model: ir.Model, container: ir.Graph | ir.Function, site: Site) -> Decision:
    plan = ort_plan(site)
    if not isinstance(plan, OrtPlan):
        return Decision(site, False, "kept", "; ".join(plan))
    new_nodes, output = ort_nodes(site, plan)
    _replace(container, site, new_nodes, output)
    model.opset_imports.setdefault(MS_DOMAIN, 1)
    container.opset_imports.setdefault(MS_DOMAIN, 1)
    return Decision(site, True, f"{plan.op} ({MS_DOMAIN})", plan.remark)


def _attention_nodes(site: Site) -> tuple[list[ir.Node], ir.Value]:
    v = site.values
    emit = Emitter(f"{site.output}__einscade")
    key = emit.key(site)
    inputs = [v.query, key, v.value]
    three_d = len(v.query.shape) == 3
    if three_d:
        axes = emit.const(np.array([0], dtype=np.int64), "axes")
        inputs = [
            emit.add("Unsqueeze", [x, axes], f"{r}4d") for x, r in zip(inputs, "qkv", strict=True)
        ]
    dropped = dropped_mask(site)
    if v.masked and dropped is None:
        mask, rank = emit.bias(site, key)
        if three_d and rank == 3:
            mask = emit.add("Unsqueeze", [mask, axes], "mask4d")
        inputs.append(mask)
    attrs = {"scale": float(site.scale)}
    if dropped == "causal":
        attrs["is_causal"] = 1
    out = emit.add("Attention", inputs, "attention", **attrs)
    if three_d:
        out = emit.add("Squeeze", [out, axes], "out3d")
    return emit.nodes, out


def _drop_dead_values(container: ir.Graph | ir.Function, candidates: list[ir.Value]) -> None:
    """Remove producers and initializers that only the replaced sites read (e.g. K^T, scales)."""
    graph = container.graph if isinstance(container, ir.Function) else container
    while candidates:
        value = candidates.pop()
        if value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        if value.name in graph.initializers and graph.initializers[value.name] is value:
            del graph.initializers[value.name]
            continue
        node = value.producer()
        if (
            node is not None
            and node.graph is graph
            and not any(out.uses() or out.is_graph_output() for out in node.outputs)
        ):
            candidates.extend(x for x in node.inputs if x is not None)
            graph.remove(node, safe=True)
