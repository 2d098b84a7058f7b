"""Shapes inside model-local functions, from the shapes at their call sites.

onnx's shape inference checks a function body once per call but records nothing inside it,
so a site in a function sees no shapes, and the rewrites into fused ops need ranks and head
counts. :func:`annotate_functions` merges the input types of every call of a function
(equal dims stay, differing ones become unknown; a rank or dtype that differs between calls
gives up), infers the body as a graph of its own with those inputs, and adds the results to
the FunctionProto's ``value_info``. That is annotation only: nodes, inputs and outputs are
unchanged, and onnx's checker and onnxruntime accept ``value_info`` in functions.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx.helper

_Key = tuple[str, str, str]  # (domain, name, overload)


def annotate_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with inferred ``value_info`` in its functions (a copy when any is added)."""
    if not proto.functions:
        return proto
    known = {info.name: info.type for info in _typed_values(proto.graph)}
    calls = _call_types(proto, known)
    annotated = onnx.ModelProto()
    annotated.CopyFrom(proto)
    changed = False
    for function in annotated.functions:
        key = (function.domain, function.name, function.overload)
        inputs = calls.get(key)
        if inputs is None or function.value_info:
            continue
        infos = _infer_body(proto, function, inputs)
        function.value_info.extend(infos)
        changed = changed or bool(infos)
    return annotated if changed else proto


def _typed_values(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    yield from graph.input
    yield from graph.value_info
    yield from graph.output
    for tensor in graph.initializer:
        yield onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)


def _call_types(proto: onnx.ModelProto, known: dict) -> dict[_Key, list[onnx.TypeProto]]:
    """Per called function, its input types merged over the graph's calls; a function with
    a call whose input types are unknown or disagree in rank or dtype is left out."""
    local = {(f.domain, f.name, f.overload) for f in proto.functions}
    merged: dict[_Key, list[onnx.TypeProto] | None] = {}
    for node in proto.graph.node:
        key = (node.domain, node.op_type, node.overload)
        if key not in local or merged.get(key, []) is None:
            continue
        types = [known.get(name) for name in node.input]
        if any(t is None or not t.HasField("tensor_type") for t in types):
            merged[key] = None
            continue
        merged[key] = types if key not in merged else _merge(merged[key], types)
    return {key: types for key, types in merged.items() if types is not None}


def _merge(first: list[onnx.TypeProto], other: list[onnx.TypeProto]) -> list | None:
    result = []
    for a, b in zip(first, other, strict=True):
        ta, tb = a.tensor_type, b.tensor_type
        if ta.elem_type != tb.elem_type or len(ta.shape.dim) != len(tb.shape.dim):
            return None
        merged = onnx.TypeProto()
        merged.CopyFrom(a)
        for dim, dim_b in zip(merged.tensor_type.shape.dim, tb.shape.dim, strict=True):
            if dim != dim_b:  # differing sizes (or names) between calls: unknown here
                dim.Clear()
        result.append(merged)
    return result


def _infer_body(proto, function: onnx.FunctionProto, inputs) -> list[onnx.ValueInfoProto]:
    """The body's inferred value types with these input types; [] if inference fails (a
    body with attribute references, say)."""
    graph = onnx.helper.make_graph(
        list(function.node),
        function.name,
        [_value_info(name, t) for name, t in zip(function.input, inputs, strict=True)],
        [onnx.ValueInfoProto(name=name) for name in function.output],
    )
    opsets = {o.domain: o.version for o in proto.opset_import}
    opsets.update({o.domain: o.version for o in function.opset_import})
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
        ir_version=proto.ir_version,
        functions=list(proto.functions),
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # annotation is best effort: the site just sees no shapes
        return []
    found = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return [info for info in found if info.type.HasField("tensor_type")]


def _value_info(name: str, type_proto: onnx.TypeProto) -> onnx.ValueInfoProto:
    info = onnx.ValueInfoProto(name=name)
    info.type.CopyFrom(type_proto)
    return info
