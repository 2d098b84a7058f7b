"""Rewrite attention sites in place: a local function carrying the cascade, or an Attention op.

``function``: each site's nodes move, unchanged, into a model-local function of domain
``einscade`` whose attribute ``cascade`` holds the printed cascade; the graph calls it. Any
runtime still runs the original computation, and a compiler can read the cascade.

``onnx-attention``: each site the standard opset-23 ``Attention`` op expresses becomes one
``Attention`` node (``scale`` is the product of the chain's scale factors; a 3-D chain is
unsqueezed to 4-D and back). Sites it cannot express are kept, with the reason.

(``ort``, com.microsoft MultiHeadAttention, is a later increment.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx.helper
import onnx_ir as ir
from onnxscript import version_converter

from einscade.frontends.onnx.shapes import same_dim, shape_text
from einscade.frontends.onnx.sites import Site
from einscade.ir.printer import print_cascade

DOMAIN = "einscade"
ATTENTION_OPSET = 23
_FLOATS = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)


@dataclass(frozen=True)
class Decision:
    """What happened to one site."""

    site: Site
    rewritten: bool
    action: str  # "function einscade::softmax_attention_0", "Attention (opset 23)", "kept"
    reason: str  # why it was kept, or a remark on the rewrite


def rewrite_sites(model: ir.Model, sites: tuple[Site, ...], mode: str) -> tuple[Decision, ...]:
    """Rewrite ``sites`` of ``model`` (modified in place) in ``mode``; one decision per site."""
    if mode not in ("function", "onnx-attention"):
        raise ValueError(f"rewrite mode {mode!r} is not implemented")
    # Read before rewriting: removed nodes lose their inputs.
    outer = {site.index: _outer_inputs(site) for site in sites}
    decisions = []
    for site in sites:
        if site.container != "graph":
            decisions.append(Decision(site, False, "kept", f"inside {site.container}"))
        elif _extra_outputs_used(site):
            reason = "its present_key/present_value or qk outputs are used (not wrapped yet)"
            decisions.append(Decision(site, False, "kept", reason))
        elif mode == "function":
            decisions.append(_wrap_in_function(model, site))
        else:
            decisions.append(_to_attention_op(model, site))
    dead = [
        value
        for d in decisions
        if d.rewritten
        for value in (*outer[d.site.index], *(o for n in d.site.values.shared for o in n.outputs))
    ]
    _drop_dead_values(model, dead)
    return tuple(decisions)


def _extra_outputs_used(site: Site) -> bool:
    """A node to be removed has an output besides the site's that others read."""
    moved = [n for n in site.values.nodes if n not in site.values.shared]
    outputs = [o for n in moved for o in n.outputs if o is not site.values.output]
    inside = set(site.values.nodes)
    return any(o.is_graph_output() or any(u.node not in inside for u in o.uses()) for o in outputs)


# -- function mode ---------------------------------------------------------------------------


def _wrap_in_function(model: ir.Model, site: Site) -> Decision:
    graph = model.graph
    nodes = site.values.nodes
    outer = _outer_inputs(site)
    # Small constants (scales, reshape shapes) go inside: a function's inputs carry no shape,
    # and a re-import must see the scale is a scalar. Large ones (masks) stay inputs.
    inner = [v for v in outer if _small_constant(v) and v not in _roles(site)]
    outer = [v for v in outer if v not in inner]
    name = _fresh_function_name(model, f"{site.cascade.name}_{site.index}")
    text = print_cascade(site.cascade)
    formal = {v: ir.Value(name=v.name, shape=v.shape, type=v.type) for v in outer}
    constants = [_constant_node(v) for v in inner]
    formal.update({v: node.outputs[0] for v, node in zip(inner, constants, strict=True)})
    body, mapping = _copy_nodes(nodes, formal)
    domains = {n.domain for n in nodes} | {""}
    opsets = {d: v for d, v in graph.opset_imports.items() if d in domains}
    body_graph = ir.Graph(
        [formal[v] for v in outer], [mapping[site.values.output]], nodes=constants + body,
        opset_imports=opsets,
    )  # fmt: skip
    cascade_attr = ir.Attr("cascade", ir.AttributeType.STRING, text)
    function = ir.Function(DOMAIN, name, graph=body_graph, attributes=[cascade_attr])
    model.functions[function.identifier()] = function
    model.opset_imports.setdefault(DOMAIN, 1)
    call = ir.Node(
        DOMAIN, name, outer, [ir.Attr("cascade", ir.AttributeType.STRING, text)],
        num_outputs=1, name=f"einscade_{name}",
    )  # fmt: skip
    _replace(graph, site, [call], call.outputs[0])
    return Decision(site, True, f"function {DOMAIN}::{name}", f"{len(nodes)} nodes wrapped")


def _roles(site: Site) -> tuple[ir.Value, ...]:
    v = site.values
    return tuple(x for x in (v.query, v.key, v.value, v.mask) if x is not None)


def _small_constant(value: ir.Value) -> bool:
    """An initializer (not a graph input) of at most 64 elements."""
    tensor = value.const_value
    return tensor is not None and tensor.size <= 64 and not value.is_graph_input()


def _constant_node(value: ir.Value) -> ir.Node:
    tensor = ir.tensor(value.const_value.numpy())  # read now: the input's file stays behind
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


def _replace(graph: ir.Graph, site: Site, new_nodes: list[ir.Node], new_output: ir.Value) -> None:
    """Swap the site's nodes for ``new_nodes``; the new output takes the old name and uses.

    Shared nodes stay for their other readers (the new nodes hold copies of them)."""
    nodes = [n for n in site.values.nodes if n not in site.values.shared]
    ir.convenience.replace_nodes_and_values(
        graph, nodes[-1], nodes, new_nodes, [site.values.output], [new_output]
    )


# -- onnx-attention mode ---------------------------------------------------------------------


def raise_opset(model: ir.Model, version: int = ATTENTION_OPSET) -> tuple[ir.Model, str | None]:
    """``model`` if its ONNX opset is ``version`` or newer, else a converted copy; with the
    reason when the conversion is not possible (onnxscript's version converter decides)."""
    current = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if current is None:
        return model, "the model imports no ONNX opset"
    if current >= version:
        return model, None
    converted = model.clone()
    try:
        version_converter.convert_version(converted, target_version=version, fallback=False)
    except Exception as error:
        text = " ".join(str(error).split())[:200]
        return model, f"cannot convert opset {current} to {version}: {text}"
    converted.opset_imports.pop("ai.onnx", None)
    converted.opset_imports[""] = version
    opsets = [onnx.helper.make_opsetid("", version)]
    minimum = onnx.helper.find_min_ir_version_for(opsets)
    converted.ir_version = max(converted.ir_version or 0, minimum)
    return converted, None


def expressible(site: Site) -> bool:
    """Whether the standard Attention op can replace this site."""
    return not attention_blockers(site)


def attention_blockers(site: Site) -> list[str]:
    """Why the standard Attention op cannot express this site ([] if it can)."""
    if site.family == "attention-op":
        return ["already a standard Attention op"]
    v = site.values
    reasons = [n for n in site.notes if n.startswith("softmax runs in")]
    if site.scale is None:
        reasons.append("the scale is computed at run time (Attention takes a constant)")
    if v.key is None:
        return [*reasons, "K is only available transposed, through dynamic Reshapes"]
    if v.query.dtype not in _FLOATS:
        reasons.append(f"Q has dtype {v.query.dtype}")
    shapes = [v.query.shape, _key_shape(site), v.value.shape]
    if any(s is None for s in shapes):
        return [*reasons, "the ranks of Q, K, V are unknown"]
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1 or ranks.pop() not in (3, 4):
        return [*reasons, f"Q, K, V have ranks {[len(s) for s in shapes]} (Attention takes 4-D)"]
    reasons += _head_blockers(*shapes)
    reasons += _mask_blockers(site)
    return reasons


def _key_shape(site: Site) -> ir.Shape | None:
    v = site.values
    if v.key_reshape is not None:
        return ir.Shape(v.key_reshape)
    if v.key.shape is None or v.key_perm is None:
        return v.key.shape
    if len(v.key_perm) != len(v.key.shape):
        return None
    return ir.Shape([v.key.shape[p] for p in v.key_perm])


def _head_blockers(q: ir.Shape, k: ir.Shape, v: ir.Shape) -> list[str]:
    batch = len(q) - 3  # batch axis index (4-D) or -1 (3-D: batch*heads in axis 0)
    if len(q) == 3:
        if same_dim(q[0], k[0]) and same_dim(k[0], v[0]):
            return []
        return [f"batch*heads of Q, K, V differ or are unknown ({q[0]}, {k[0]}, {v[0]})"]
    reasons = []
    if not (same_dim(q[batch], k[batch]) and same_dim(k[batch], v[batch])):
        reasons.append(f"batch of Q, K, V differ or are unknown ({q[0]}, {k[0]}, {v[0]})")
    if not same_dim(k[1], v[1]):
        reasons.append(f"K and V have different heads ({k[1]}, {v[1]})")
    if not (same_dim(q[1], k[1]) or k[1] == 1):
        reasons.append(f"Q heads {q[1]} are not a multiple of K heads {k[1]}")
    return reasons


def _mask_blockers(site: Site) -> list[str]:
    mask = site.values.mask
    if mask is None:
        return []
    if mask.dtype != site.values.query.dtype:
        return [f"the mask has dtype {mask.dtype}, Q has {site.values.query.dtype}"]
    scores = next(n for n in site.values.nodes if n.op_type == "Softmax").inputs[0].shape
    if mask.shape is None or scores is None:
        return ["the mask or score shapes are unknown"]
    if len(mask.shape) > len(scores):
        return [f"the mask {shape_text(mask.shape)} has more axes than the scores"]
    for dim, score_dim in zip(reversed(mask.shape), reversed(scores), strict=False):
        # A valid Add cannot stretch a score axis longer than 1: an unknown mask dim there
        # is 1 or equal to it.
        fits = isinstance(score_dim, int) and score_dim > 1 and not isinstance(dim, int)
        if not (dim == 1 or fits or same_dim(dim, score_dim)):
            return [
                f"the mask {shape_text(mask.shape)} does not broadcast to the scores "
                f"{shape_text(scores)}"
            ]
    return []


def _to_attention_op(model: ir.Model, site: Site) -> Decision:
    blockers = attention_blockers(site)
    if blockers:
        return Decision(site, False, "kept", "; ".join(blockers))
    new_nodes, output = _attention_nodes(site)
    _replace(model.graph, site, new_nodes, output)
    # Without SDPA's IsNaN guard a row whose mask hides every key gave NaN; Attention gives 0.
    guarded = any("IsNaN" in note for note in site.notes)
    remark = "" if guarded or site.mask is None else "rows masked entirely by -inf give 0, not NaN"
    return Decision(site, True, f"Attention (opset {ATTENTION_OPSET})", remark)


def _attention_nodes(site: Site) -> tuple[list[ir.Node], ir.Value]:
    v = site.values
    tag = f"{site.output}__einscade"
    nodes: list[ir.Node] = []

    def add(op: str, inputs, suffix: str, **attrs) -> ir.Value:
        attributes = [_attr(k, x) for k, x in attrs.items()]
        node = ir.Node("", op, inputs, attributes, num_outputs=1, name=f"{tag}_{suffix}")
        node.outputs[0].name = f"{tag}_{suffix}"
        nodes.append(node)
        return node.outputs[0]

    key = v.key
    if v.key_perm is not None:
        key = add("Transpose", [key], "k", perm=list(v.key_perm))
    if v.key_reshape is not None:
        shape = add("Constant", [], "k_shape", value=ir.tensor(np.array(v.key_reshape, np.int64)))
        key = add("Reshape", [key, shape], "k")
    inputs = [v.query, key, v.value]
    three_d = len(v.query.shape) == 3
    if three_d:
        axes = add("Constant", [], "axes", value=ir.tensor(np.array([0], dtype=np.int64)))
        inputs = [add("Unsqueeze", [x, axes], f"{r}4d") for x, r in zip(inputs, "qkv", strict=True)]
    if v.mask is not None:
        mask = v.mask
        if three_d and len(mask.shape) == 3:
            mask = add("Unsqueeze", [mask, axes], "mask4d")
        inputs.append(mask)
    out = add("Attention", inputs, "attention", scale=float(site.scale))
    if three_d:
        out = add("Squeeze", [out, axes], "out3d")
    return nodes, out


def _attr(name: str, value) -> ir.Attr:
    if isinstance(value, float):
        return ir.Attr(name, ir.AttributeType.FLOAT, value)
    if isinstance(value, list):
        return ir.Attr(name, ir.AttributeType.INTS, value)
    return ir.Attr(name, ir.AttributeType.TENSOR, value)


def _drop_dead_values(model: ir.Model, candidates: list[ir.Value]) -> None:
    """Remove producers and initializers that only the replaced sites read (e.g. K^T, scales)."""
    graph = model.graph
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
