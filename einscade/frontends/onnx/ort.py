"""``--to ort``: onnxruntime's com.microsoft ``MultiHeadAttention`` / ``GroupQueryAttention``.

Input layouts, from onnxruntime 1.31's contrib schemas (docs/ContribOperators.md; the same
text is in ``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()``):

- ``MultiHeadAttention(query [B, S, H*E], key [B, H, L, E] or [B, L, H*E], value likewise,
  bias, key_padding_mask, attention_bias [B or 1, H or 1, S, L], ...)``, attributes
  ``num_heads``, ``scale`` (default ``1/sqrt(E)``), ``unidirectional``; output
  ``[B, S, H*F]``.
- ``GroupQueryAttention(query [B, S, H*E], key [B, L, HK*E], value [B, L, HK*E], past_key,
  past_value, seqlens_k int32 [B] (total length - 1), total_sequence_length int32 scalar,
  cos_cache, sin_cache, position_ids, attention_bias, ...)``, attributes ``num_heads``,
  ``kv_num_heads``, ``scale``, ``softcap``, ``causal`` (default 1); output ``[B, S, H*E]``.

Measured on the CPU provider (and checked again on every rewrite): ``unidirectional=1`` is
the causal mask only when S == L; ``attention_bias`` needs its last two dims equal to S and
L (no broadcasting there: it is expanded first); ``GroupQueryAttention`` without a past needs
S == L and V's head size equal to K's. A site these ops cannot express is kept, with why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from einscade.frontends.onnx.layouts import (
    Emitter,
    dropped_mask,
    fused_op_checks,
    head_blockers,
    mask_blockers,
)
from einscade.frontends.onnx.records import Site
from einscade.frontends.onnx.repeats import RepeatedKV, repeated_kv
from einscade.frontends.onnx.shapes import same_dim

MS_DOMAIN = "com.microsoft"
_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})


@dataclass(frozen=True)
class OrtPlan:
    """How one site becomes a com.microsoft op."""

    op: str  # "MultiHeadAttention" or "GroupQueryAttention"
    layout: str  # "bhpe" [B, H, P, E]; "flat" [B*H, P, E]; "bshd" [B, P, H*E] (Attention op)
    heads: int
    kv_heads: int
    causal: bool
    bias: bool  # the site's mask becomes attention_bias
    remark: str
    # K and V before the exporter repeated them over query heads (read by GroupQueryAttention)
    repeated: RepeatedKV | None = None


def ort_plan(site: Site) -> OrtPlan | list[str]:
    """The op and layout for ``site``, or why neither op expresses it."""
    if site.family.startswith("ms-"):
        return ["already a com.microsoft op"]
    v = site.values
    reasons, shapes = fused_op_checks(site, "the ops take", _TYPES)
    if site.family == "attention-op" and len(v.nodes[0].inputs) > 4 and v.nodes[0].inputs[4]:
        reasons.append("past_key/past_value (a KV cache) are not mapped")
    if shapes is None:
        return reasons
    layout = _layout(site, shapes)
    if isinstance(layout, str):
        return [*reasons, layout]
    name, heads, kv_heads, lengths, head_sizes = layout
    if name != "bshd":
        reasons += head_blockers(*shapes)
    softcap = _softcap(site)
    grouped = kv_heads != heads or softcap
    same_length = same_dim(*lengths)
    repeated = _usable_repeat(site, name, same_length, head_sizes)
    if repeated is not None:
        grouped, kv_heads = True, repeated.kv_heads
    causal, bias, mask_reasons = _mask_plan(site, same_length)
    reasons += mask_reasons
    if grouped:
        reasons += _gqa_blockers(heads, kv_heads, same_length, head_sizes)
    if reasons:
        return reasons
    op = "GroupQueryAttention" if grouped else "MultiHeadAttention"
    remark = _remark(site, causal, bias)
    if repeated is not None:
        remark = "; ".join(x for x in (remark, _REPEAT_REMARK.format(repeated.kv_heads)) if x)
    return OrtPlan(op, name, heads, kv_heads, causal, bias, remark, repeated)


_REPEAT_REMARK = "K, V repeated by the export: GroupQueryAttention reads their {} KV heads"


def _usable_repeat(site: Site, layout: str, same_length: bool, head_sizes) -> RepeatedKV | None:
    """The un-repeated K and V where GroupQueryAttention can read them: a [B, H, P, E] site
    whose K is not transposed further, P = M (no past), and K, V of one head size."""
    if layout != "bhpe" or site.values.key_perm is not None or not same_length:
        return None
    key_size, value_size = head_sizes
    if not (isinstance(key_size, int) and key_size == value_size):
        return None
    return repeated_kv(site)


def _layout(site: Site, shapes) -> tuple | str:
    """(layout, heads, kv heads, (P, M), (E of K, F of V)), or why none fits."""
    q, k, v = shapes
    ranks = [len(s) for s in shapes]
    attrs = site.values.nodes[0].attributes if site.family == "attention-op" else {}
    if ranks == [3, 3, 3] and "q_num_heads" in attrs:
        heads, kv_heads = attrs["q_num_heads"].as_int(), attrs["kv_num_heads"].as_int()
        sizes = (_per_head(k[2], kv_heads), _per_head(v[2], kv_heads))
        return "bshd", heads, kv_heads, (q[1], k[1]), sizes
    if ranks == [3, 3, 3]:
        if k[0] == 1 and q[0] != 1:
            return "K is broadcast over the batch*heads axis (the ops need one K per head)"
        return "flat", 1, 1, (q[1], k[1]), (k[2], v[2])
    if ranks != [4, 4, 4]:
        return f"Q, K, V have ranks {ranks} (the ops take 3-D or 4-D)"
    if not (isinstance(q[1], int) and isinstance(k[1], int)):
        return f"the head counts of Q and K are not static ({q[1]}, {k[1]})"
    return "bhpe", q[1], k[1], (q[2], k[2]), (k[3], v[3])


def _per_head(hidden, heads: int):
    return hidden // heads if isinstance(hidden, int) else None


def _softcap(site: Site) -> float:
    attrs = site.values.nodes[0].attributes if site.family == "attention-op" else {}
    return attrs["softcap"].as_float() if "softcap" in attrs else 0.0


def _mask_plan(site: Site, same_length: bool) -> tuple[bool, bool, list[str]]:
    """(causal flag, mask as attention_bias, reasons against)."""
    masked = site.values.masked
    dropped = dropped_mask(site)
    if site.causal is True:
        if not same_length:
            return False, False, ["causal with query and key lengths not shown equal"]
        return True, masked, _bias_blockers(site) if masked else []
    if site.causal:  # bottom-right with a KV cache, already refused
        return False, False, []
    if dropped == "nothing":
        return False, False, []
    if dropped == "causal" and same_length:
        return True, False, []
    if not masked:
        return False, False, []
    return False, True, _bias_blockers(site)


def _bias_blockers(site: Site) -> list[str]:
    mask = site.values.mask
    if mask is None:
        return []  # only Swin's window mask, checked by the chain's own Add
    if mask.dtype == ir.DataType.BOOL and site.family == "attention-op":
        return []
    if site.family == "decomposed":
        return mask_blockers(site)
    if mask.dtype != site.values.query.dtype:
        return [f"the mask has dtype {mask.dtype}, Q has {site.values.query.dtype}"]
    return []


def _gqa_blockers(heads: int, kv_heads: int, same_length: bool, head_sizes) -> list[str]:
    reasons = []
    if kv_heads < 1 or heads % kv_heads:
        reasons.append(f"{heads} query heads are not a multiple of {kv_heads} KV heads")
    if not same_length:
        reasons.append(
            "GroupQueryAttention without a KV cache needs as many keys as queries "
            "(not shown equal), and MultiHeadAttention needs as many K heads as Q heads"
        )
    key_size, value_size = head_sizes
    if not (isinstance(key_size, int) and key_size == value_size):
        reasons.append(f"GroupQueryAttention needs V's head size {value_size} = K's {key_size}")
    return reasons


def _remark(site: Site, causal: bool, bias: bool) -> str:
    dropped = dropped_mask(site)
    if dropped == "causal" and causal:
        return "constant causal mask -> causal flag"
    if dropped == "nothing":
        return "constant mask hides nothing: dropped"
    guarded = any("IsNaN" in note for note in site.notes)
    return "rows masked entirely by -inf give NaN, not 0" if bias and guarded else ""


# -- nodes -------------------------------------------------------------------------------------


def ort_nodes(site: Site, plan: OrtPlan) -> tuple[list[ir.Node], ir.Value]:
    """The nodes replacing ``site`` and the value that takes its output's place."""
    v = site.values
    emit = Emitter(f"{site.output}__einscade")
    if plan.repeated is not None:  # the repeat stays unread and is removed with the chain
        key, value = plan.repeated.key, plan.repeated.value
    else:
        key, value = emit.key(site), v.value
    query, key_as_given = v.query, key
    if plan.layout == "bhpe":
        query = _heads_last(emit, query, "q")
        if plan.op == "GroupQueryAttention":  # MultiHeadAttention reads 4-D K, V as they are
            key, value = _heads_last(emit, key, "k"), _heads_last(emit, value, "v")
    bias = _attention_bias(emit, site, plan, v.query, key_as_given) if plan.bias else None
    attrs: dict[str, object] = {"num_heads": plan.heads}
    if site.scale is not None:
        attrs["scale"] = float(site.scale)
    if plan.op == "MultiHeadAttention":
        inputs = [query, key, value] + ([None, None, bias] if bias is not None else [])
        if plan.causal:
            attrs["unidirectional"] = 1
    else:
        seqlens, total = _sequence_lengths(emit, key, plan.layout)
        inputs = [query, key, value, None, None, seqlens, total]
        inputs += [None, None, None, bias] if bias is not None else []
        attrs.update(kv_num_heads=plan.kv_heads, causal=int(plan.causal))
        if _softcap(site):
            attrs["softcap"] = _softcap(site)
    out = emit.add(plan.op, inputs, plan.op, domain=MS_DOMAIN, **attrs)
    if plan.layout == "bhpe":
        shape = emit.const(np.array([0, 0, plan.heads, -1], np.int64), "out_shape")
        split = emit.add("Reshape", [out, shape], "out_heads")
        out = emit.add("Transpose", [split], "out", perm=[0, 2, 1, 3])
    return emit.nodes, out


def _heads_last(emit: Emitter, x: ir.Value, role: str) -> ir.Value:
    """[B, H, N, D] -> [B, N, H*D]."""
    swapped = emit.add("Transpose", [x], f"{role}_bshd", perm=[0, 2, 1, 3])
    shape = emit.const(np.array([0, 0, -1], np.int64), f"{role}_flat_shape")
    return emit.add("Reshape", [swapped, shape], f"{role}_flat")


def _attention_bias(emit: Emitter, site: Site, plan: OrtPlan, query, key) -> ir.Value:
    """The site's mask as a float [B|1, H|1, P, M] tensor (``key`` is K as [..., M, E])."""
    mask, rank = emit.bias(site, key)
    if mask.dtype == ir.DataType.BOOL:
        dtype = query.dtype.numpy()
        zero = emit.const(np.array(0, dtype), "mask_zero")
        hidden = emit.const(np.array(-np.inf, dtype), "mask_hidden")
        mask = emit.add("Where", [mask, zero, hidden], "mask_additive")
    axes = [1] if plan.layout == "flat" and rank == 3 else list(range(4 - rank))
    if axes:
        axes_value = emit.const(np.array(axes, np.int64), "mask_axes")
        mask = emit.add("Unsqueeze", [mask, axes_value], "mask4d")
    # The ops read the last two dims whole: expand a mask broadcast over queries or keys.
    token_axis = {"bhpe": 2, "flat": 1, "bshd": 1}[plan.layout]
    key_axis = 2 if plan.layout == "bhpe" else 1
    shape = emit.add("Concat", [
        emit.const(np.array([1, 1], np.int64), "mask_lead"),
        emit.dim(query, token_axis, "mask_queries"),
        emit.dim(key, key_axis, "mask_keys"),
    ], "mask_full_shape", axis=0)  # fmt: skip
    return emit.add("Expand", [mask, shape], "attention_bias")


def _sequence_lengths(emit: Emitter, key: ir.Value, layout: str) -> tuple[ir.Value, ir.Value]:
    """GroupQueryAttention's seqlens_k (int32 [B], each M - 1) and total_sequence_length
    (int32 scalar M) from K as [B, M, HK*E]: every batch entry has all M keys."""
    del layout  # K is [B, M, HK*E] in every layout GroupQueryAttention gets
    keys = emit.add("Cast", [emit.dim(key, 1, "keys")], "keys_i32", to=ir.DataType.INT32)
    batch = emit.dim(key, 0, "batch")
    one = emit.const(np.array([1], np.int32), "one_i32")
    last = emit.add("Sub", [keys, one], "last_key")
    seqlens = emit.add("Expand", [last, batch], "seqlens_k")
    scalar = emit.const(np.array([], np.int64), "scalar_shape")
    total = emit.add("Reshape", [keys, scalar], "total_sequence_length")
    return seqlens, total
