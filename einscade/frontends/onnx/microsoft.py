"""Lift onnxruntime's fused attention ops (domain com.microsoft) into sites.

``Attention`` projects Q, K and V from one input inside the op (``input @ weights + bias``);
``MultiHeadAttention`` takes Q, K and V (or packed QKV / KV) in ``[batch, tokens, heads*dim]``,
optionally adding the projection bias. Both scale by ``scale`` (default ``1/sqrt(head
size)``), add ``attention_bias``, hide the keys a key padding mask marks 0 (they get
``mask_filter_value``, -10000 by default) and mask causally when ``unidirectional=1``. The
cascade is the attention after the projection; the notes say what the op adds around it.
"""

from __future__ import annotations

from dataclasses import replace

import onnx_ir as ir

from einscade.frontends.onnx.masks import cascade_for
from einscade.frontends.onnx.records import ConstantLookup, Site, SiteValues, shapes_of
from einscade.frontends.onnx.shapes import node_name, shape_text

_DEFAULT_FILL = -10000.0


def lift_attention(index, label, node_sets, match, constants: ConstantLookup) -> Site:
    """A com.microsoft ``Attention`` node (inputs, weights, bias, mask_index, past,
    attention_bias, past_sequence_length)."""
    node = node_sets[0][0]
    x, weights, bias, mask_index, past, attention_bias = _inputs(node, 6)
    heads = _int(node, "num_heads")
    causal = _causal(node, past is not None)
    notes = [
        f"Q, K, V are projected inside the op: '{x.name}' @ '{weights.name}'"
        + (f" + '{bias.name}'" if bias is not None else "")
        + "; the cascade starts after the projection",
    ]
    if "qkv_hidden_sizes" in node.attributes:
        sizes = list(node.attributes["qkv_hidden_sizes"].as_ints())
        notes.append(f"hidden sizes of Q, K, V: {sizes}")
    notes += _past_notes(past is not None, causal)
    mask, mask_notes = _masks(node, mask_index, attention_bias, constants)
    site = _site(
        index, label, node, family="ms-attention", causal=causal, heads=heads,
        roles=(x, x, x), mask=mask, notes=notes + mask_notes, constants=constants,
        layout=f"[batch, tokens, hidden] projected in the op (num_heads={heads})",
        shapes=shapes_of(input=x, weights=weights, bias=bias, out=node.outputs[0]),
    )  # fmt: skip
    if _int(node, "do_rotary"):  # applied inside the op: the cascade would be wrong
        return replace(site, unsupported=("rotary embedding of Q and K (do_rotary=1)",))
    return site


def lift_multi_head(index, label, node_sets, match, constants: ConstantLookup) -> Site:
    """A com.microsoft ``MultiHeadAttention`` node (query, key, value, bias,
    key_padding_mask, attention_bias, past_key, past_value, ...)."""
    node = node_sets[0][0]
    query, key, value, bias, padding, attention_bias, past_key = _inputs(node, 7)
    heads = _int(node, "num_heads")
    causal = _causal(node, past_key is not None)
    notes = [] if bias is None else [f"the projection bias '{bias.name}' is added to Q, K, V"]
    layout, roles = _mha_layout(query, key, value, heads)
    if key is not None and key.shape is not None and len(key.shape) == 4:
        notes.append("K and V are given as [batch, heads, tokens, dim]")
    notes += _past_notes(past_key is not None, causal)
    mask, mask_notes = _masks(node, padding, attention_bias, constants)
    return _site(
        index, label, node, family="ms-mha", causal=causal, heads=heads, roles=roles,
        mask=mask, notes=notes + mask_notes, constants=constants, layout=layout,
        shapes=shapes_of(Q=query, K=key, V=value, mask=mask, out=node.outputs[0]),
    )  # fmt: skip


def _site(index, label, node, *, family, causal, heads, roles, mask, notes, constants, layout,
          shapes) -> Site:  # fmt: skip
    query, key, value = roles
    scale = node.attributes["scale"].as_float() if "scale" in node.attributes else None
    # A key padding mask is not a float tensor of the scores' shape: only attention_bias
    # constants are searched for structure.
    additive = mask is not None and mask.dtype != ir.DataType.INT32
    info = constants.mask(mask if additive else None)
    cascade, mask_notes = cascade_for(
        info.recognised, has_mask=mask is not None, causal=causal, scale=scale
    )
    form = info.form if additive else (None if mask is None else _int_form(mask))
    return Site(
        index=index,
        family=family,
        container=label,
        node_names=(node_name(node),),
        q=query.name or "",
        k="" if key is None else key.name or "",
        v=value.name or "",
        mask=None if mask is None else mask.name,
        output=node.outputs[0].name or "",
        shapes=shapes,
        layout=layout,
        scale=scale,
        scale_form="attribute" if scale is not None else "default 1/sqrt(head size)",
        causal=causal,
        kv_heads=False,
        mask_form=form,
        notes=(*notes, *info.notes, *mask_notes),
        cascade=cascade,
        values=SiteValues((node,), (), node.outputs[0], query, key, None, None, value, mask),
        mask_structure=info.recognised,
    )


def _inputs(node: ir.Node, count: int) -> list[ir.Value | None]:
    return (list(node.inputs) + [None] * count)[:count]


def _int(node: ir.Node, name: str, default: int = 0) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _causal(node: ir.Node, has_past: bool) -> bool | str:
    if not _int(node, "unidirectional"):
        return False
    return "bottom_right" if has_past else True


def _past_notes(has_past: bool, causal: bool | str) -> list[str]:
    if not has_past:
        return []
    notes = ["K and V are concatenated after the past state"]
    if causal:
        notes.append("causal is offset by the past length (bottom-right)")
    return notes


def _masks(node, padding, attention_bias, constants) -> tuple[ir.Value | None, list[str]]:
    """The value lifted as the cascade's bias input, and notes on the op's masks."""
    notes = []
    fill = node.attributes.get("mask_filter_value")
    fill_value = _DEFAULT_FILL if fill is None else fill.as_float()
    if padding is not None:
        notes.append(
            f"key padding mask '{padding.name}' {shape_text(padding.shape)}: "
            f"{_padding_form(padding)} get {fill_value:g}; lifted into the bias input"
        )
    if attention_bias is not None and padding is not None:
        notes.append(f"attention_bias '{attention_bias.name}' is added to the same bias input")
    return (attention_bias if attention_bias is not None else padding), notes


def _padding_form(mask: ir.Value) -> str:
    """Which keys a key padding mask hides, by its rank (the ops' documented formats)."""
    rank = None if mask.shape is None else len(mask.shape)
    if rank == 1:
        return "keys past each batch entry's length (or outside its start/end positions)"
    return "keys marked 0"


def _int_form(mask: ir.Value) -> str:
    dtype = mask.dtype.name.lower() if mask.dtype is not None else "?"
    return f"{dtype} {shape_text(mask.shape)} (key padding)"


def _mha_layout(query, key, value, heads: int) -> tuple[str, tuple]:
    """The input layout of a MultiHeadAttention node and the values standing for Q, K, V."""
    rank = None if query.shape is None else len(query.shape)
    if key is None:
        return f"packed QKV [batch, tokens, heads, 3, dim] (num_heads={heads})", (
            query, query, query)  # fmt: skip
    if value is None:
        return f"[batch, tokens, heads*dim], packed KV (num_heads={heads})", (query, key, key)
    text = "[batch, tokens, heads*dim]" if rank == 3 else f"rank {rank}"
    return f"{text} (num_heads={heads})", (query, key, value)
