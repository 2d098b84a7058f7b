"""K and V repeated over query heads by the exporter (grouped-query attention).

torch's dynamo exporter writes ``repeat_kv`` / SDPA's ``enable_gqa`` as
``Reshape(Expand(Unsqueeze(x, [2]), [B, HK, G, M, D]), [B, HK*G, M, D])``: each of the HK
KV heads of ``x`` is read by G query heads in a row, which is exactly what
``GroupQueryAttention`` does with ``kv_num_heads = HK``. :func:`repeated_kv` finds the
un-repeated K and V of a decomposed site (the site's cascade keeps the repeated ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from einscade.frontends.onnx.records import Site


@dataclass(frozen=True)
class RepeatedKV:
    """K and V before the repeat, ``[B, HK, M, D]``, and HK."""

    key: ir.Value
    value: ir.Value
    kv_heads: int


def repeated_kv(site: Site) -> RepeatedKV | None:
    """The un-repeated K and V of a 4-D decomposed or Attention-op site, if both are repeats
    of HK heads (dynamo repeats K and V in front of opset 23's Attention op too)."""
    v = site.values
    if site.family not in ("decomposed", "attention-op") or v.key is None or v.query.shape is None:
        return None
    heads = v.query.shape[1] if len(v.query.shape) == 4 else None
    if not isinstance(heads, int):
        return None
    # K is read as Reshape(key, key_reshape) when the chain had K^T through Reshapes.
    key = _expand_source(v.key) if v.key_reshape is not None else _repeat_source(v.key)
    value = _repeat_source(v.value)
    if key is None or value is None or key[1] != value[1] or heads % key[1]:
        return None
    return RepeatedKV(key[0], value[0], key[1])


def _repeat_source(value: ir.Value) -> tuple[ir.Value, int] | None:
    """(x, HK) for ``value = Reshape(Expand(Unsqueeze(x, [2]), ...), [B, HK*G, M, D])``."""
    node = value.producer()
    if node is None or node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
        return None
    return _expand_source(node.inputs[0])


def _expand_source(value: ir.Value | None) -> tuple[ir.Value, int] | None:
    """(x, HK) for ``value = Expand(Unsqueeze(x, [2]), [B, HK, G, M, D])``, x 4-D."""
    expand = None if value is None else value.producer()
    if expand is None or expand.op_type != "Expand" or value.shape is None:
        return None
    unsqueeze = expand.inputs[0].producer()
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return None
    source = unsqueeze.inputs[0]
    if _axes(unsqueeze) != [2] or source.shape is None or len(source.shape) != 4:
        return None
    kv_heads = source.shape[1]
    if len(value.shape) != 5 or not isinstance(kv_heads, int) or value.shape[1] != kv_heads:
        return None
    return source, kv_heads


def _axes(node: ir.Node) -> list[int] | None:
    """Unsqueeze's axes (attribute before opset 13, constant input after)."""
    if "axes" in node.attributes:
        return list(node.attributes["axes"].as_ints())
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    axes = node.inputs[1].const_value
    if axes is None and node.inputs[1].producer() is not None:
        attr = node.inputs[1].producer().attributes.get("value")
        axes = None if attr is None or attr.is_ref() else attr.value
    return None if axes is None else np.asarray(axes.numpy()).reshape(-1).tolist()
