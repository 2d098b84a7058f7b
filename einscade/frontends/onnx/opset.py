"""Raise a model's ONNX opset for ``--to onnx-attention`` (the ``Attention`` op needs 23).

onnxscript's version converter does the conversion, with two changes:

- its public ``convert_version`` inlines every model-local function first; we call the
  converter proper, which converts the graph and each function in place, so a model's
  functions stay functions (and sites inside them can be rewritten there);
- it has adapters for a few ops only and silently keeps the others' attributes. Where an
  opset turned an attribute into an input (``ReduceMean``'s ``axes`` at 18, ``Squeeze``'s
  ``axes`` at 13, ...), the old node is invalid at the new opset: timm's Swin has a
  ``ReduceMean(axes=[1])`` that the converter leaves as it is. :func:`_attributes_to_inputs`
  moves such attributes into a ``Constant`` input before converting, which is what the
  newer schemas define as the same computation.

Every node of the converted graph and functions is then checked with the onnx checker;
a complaint keeps every site, with it as the reason.
"""

from __future__ import annotations

import numpy as np
import onnx.checker
import onnx.helper
import onnx_ir as ir
from onnxscript.version_converter import _version_converter

ATTENTION_OPSET = 23

# op -> (opset from which the attribute is an input, attribute, input position). From the
# operator changelog: Reduce* at 18 (ReduceSum at 13), Squeeze / Unsqueeze / Split at 13.
_ATTRIBUTE_INPUTS: dict[str, tuple[int, str, int]] = {
    **{
        op: (18, "axes", 1)
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSumSquare",
        )  # fmt: skip
    },
    "ReduceSum": (13, "axes", 1),
    "Squeeze": (13, "axes", 1),
    "Unsqueeze": (13, "axes", 1),
    "Split": (13, "split", 1),
}


def onnx_opset(model: ir.Model) -> int | None:
    """The model's ``ai.onnx`` opset version."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx"))


def raise_opset(model: ir.Model, version: int = ATTENTION_OPSET) -> tuple[ir.Model, str | None]:
    """``model`` if its ONNX opset is ``version`` or newer, else a converted copy; with the
    reason when the conversion is not possible (the converted nodes are checked)."""
    current = onnx_opset(model)
    if current is None:
        return model, "the model imports no ONNX opset"
    if current >= version:
        return model, None
    converted = model.clone()
    try:
        for container in (converted.graph, *converted.functions.values()):
            _attributes_to_inputs(container, current, version)
        _version_converter.convert_version(converted, target_version=version)
    except Exception as error:
        text = " ".join(str(error).split())[:200]
        return model, f"cannot convert opset {current} to {version}: {text}"
    converted.opset_imports.pop("ai.onnx", None)
    converted.opset_imports[""] = version
    opsets = [onnx.helper.make_opsetid("", version)]
    minimum = onnx.helper.find_min_ir_version_for(opsets)
    converted.ir_version = max(converted.ir_version or 0, minimum)
    broken = _conversion_error(converted)
    if broken is not None:
        return model, f"converting opset {current} to {version} gives an invalid model: {broken}"
    return converted, None


def _attributes_to_inputs(container: ir.Graph | ir.Function, current: int, target: int) -> None:
    """Move attributes that became inputs between ``current`` and ``target`` into Constant
    inputs (the converter has no adapter for them)."""
    opset = container.opset_imports.get("", current)
    taken = {v.name for n in container for v in n.outputs} | {v.name for v in container.inputs}
    for node in list(container):
        change = _ATTRIBUTE_INPUTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if change is None:
            continue
        since, name, position = change
        attr = node.attributes.get(name)
        if not (opset < since <= target) or attr is None or attr.is_ref():
            continue
        values = np.array(attr.as_ints(), dtype=np.int64)
        label = _fresh(f"{node.name or node.op_type}_{name}", taken)
        constant = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(values))],
                           name=label)  # fmt: skip
        constant.outputs[0].name = label
        container.insert_before(node, constant)
        inputs = list(node.inputs) + [None] * (position + 1 - len(node.inputs))
        inputs[position] = constant.outputs[0]
        replacement = ir.Node(
            node.domain, node.op_type, inputs,
            [a for a in node.attributes.values() if a.name != name],
            num_outputs=len(node.outputs), name=node.name, version=node.version,
        )  # fmt: skip
        ir.convenience.replace_nodes_and_values(
            container, node, [node], [replacement], list(node.outputs), list(replacement.outputs)
        )


def _fresh(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first name not in ``taken`` (added)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _conversion_error(model: ir.Model) -> str | None:
    """The onnx checker's complaint about a converted graph's or function's nodes; nodes
    only, so no weights are read."""
    for container in (model.graph, *model.functions.values()):
        context = onnx.checker.C.CheckerContext()
        context.ir_version = model.ir_version
        context.opset_imports = {**model.opset_imports, **container.opset_imports}
        for node in container:
            try:
                onnx.checker.check_node(ir.serde.serialize_node(node), context)
            except Exception as error:
                where = "" if container is model.graph else f" (in function {container.name})"
                return " ".join(str(error).split())[:200] + where
    return None
