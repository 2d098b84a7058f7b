"""Lift onnxruntime's com.microsoft ``GroupQueryAttention`` into a site.

What the op computes (onnxruntime 1.31, ``docs/ContribOperators.md`` and the CPU kernel;
the prefill rules were measured on the CPU provider):

- ``query [B, P, H*E]``, ``key`` / ``value [B, L, HK*E]`` (``num_heads`` H, ``kv_num_heads``
  HK; query head h reads KV head ``h // (H / HK)``), or packed QKV
  ``[B, P, (H + 2*HK)*E]`` when ``key`` and ``value`` are absent; output ``[B, P, H*E]``.
- Entry b holds ``T_b = seqlens_k[b] + 1`` keys; keys ``m >= T_b`` are hidden.
- Without ``past_key`` (prefill) the op needs L = P; ``causal=1`` (the default) is top-left,
  ``m <= p``. With ``past_key`` the keys are the first ``T_b - P`` rows of the past (BNSH)
  followed by the new ones, and causal is bottom-right per entry: ``m <= p + T_b - P``.
- ``local_window_size`` W > 0 keeps the W most recent keys, the query's own included:
  ``m > c - W`` where c is the causal bound above (measured: W = 1 sees only itself).
- Scores are ``scale * Q.K`` (default ``1/sqrt(E)``), soft-capped (``softcap``), *then*
  ``attention_bias [B|1, H|1, P, T]`` is added (measured: capping the sum differs).

Rotary embeddings (``do_rotary``), Q/K RMS norms, ``smooth_softmax`` / ``head_sink``,
quantized or window-sized caches are computed inside the op and are not in the cascade:
such a site is listed with the reason and never rewritten (:attr:`Site.unsupported`).
"""

from __future__ import annotations

import onnx_ir as ir

from einscade.frontends.builder import CascadeBuilder
from einscade.frontends.onnx.records import ConstantLookup, Site, SiteValues, shapes_of
from einscade.frontends.onnx.shapes import node_name
from einscade.ir.cascade import Cascade

_INPUTS = (
    "query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length",
    "cos_cache", "sin_cache", "position_ids", "attention_bias", "head_sink", "k_scale",
    "v_scale", "q_norm_weight", "k_norm_weight",
)  # fmt: skip


def lift_group_query(index, label, node_sets, match, constants: ConstantLookup) -> Site:
    """A com.microsoft ``GroupQueryAttention`` node."""
    del match
    node = node_sets[0][0]
    given = dict(zip(_INPUTS, list(node.inputs) + [None] * len(_INPUTS), strict=False))
    heads, kv_heads = _int(node, "num_heads"), _int(node, "kv_num_heads")
    causal, window = bool(_int(node, "causal", 1)), _int(node, "local_window_size", -1)
    scale = node.attributes["scale"].as_float() if "scale" in node.attributes else None
    softcap = node.attributes["softcap"].as_float() if "softcap" in node.attributes else 0.0
    past, bias = given["past_key"] is not None, given["attention_bias"]
    query, key, value = given["query"], given["key"], given["value"]
    packed = key is None
    cascade = group_query_cascade(
        grouped=kv_heads != heads, causal=causal, past=past, window=window,
        scale=scale, softcap=softcap, bias=bias is not None,
    )  # fmt: skip
    layout = (
        "packed QKV [batch, tokens, (num_heads + 2*kv_num_heads)*dim] "
        if packed
        else "[batch, tokens, heads*dim] "
    ) + f"(num_heads={heads}, kv_num_heads={kv_heads})"
    info = constants.mask(bias)
    return Site(
        index=index,
        family="ms-gqa",
        container=label,
        node_names=(node_name(node),),
        q=query.name or "",
        k="" if packed else key.name or "",
        v="" if packed else value.name or "",
        mask=None if bias is None else bias.name,
        output=node.outputs[0].name or "",
        shapes=shapes_of(Q=query, K=key, V=value, mask=bias, out=node.outputs[0]),
        layout=layout,
        scale=scale,
        scale_form="attribute" if scale is not None else "default 1/sqrt(head size)",
        causal=("bottom_right" if past else True) if causal else False,
        kv_heads=kv_heads != heads,
        mask_form=info.form,
        notes=tuple(_notes(node, given, causal, window, packed)),
        cascade=cascade,
        values=SiteValues(
            (node,),
            (),
            node.outputs[0],
            query,
            None if packed else key,
            None,
            None,
            query if packed else value,
            bias,
        ),  # fmt: skip
        unsupported=tuple(_unsupported(node, given)),
    )


def group_query_cascade(*, grouped: bool, causal: bool, past: bool, window: int,
                        scale: float | None, softcap: float, bias: bool) -> Cascade:  # fmt: skip
    """``@group_query_attention``: softmax attention over the keys ``m <= seqlens_k[b]``
    of each batch entry, causal top-left (prefill) or bottom-right per entry (with a past)."""
    kv = "hk" if grouped else "h"
    inputs = ["Q[b, h, p, e]", f"K[b, {kv}, m, e]", f"V[b, {kv}, m, f]", "seqlens_k[b]"]
    if bias:
        inputs.append("bias[b, h, p, m]")
    b = CascadeBuilder("group_query_attention", inputs=inputs)
    if grouped:
        b.size("G", "H // HK")
    b.param("scale", "float", "1 / sqrt(E)" if scale is None else scale)
    if softcap:
        b.param("softcap", "float", softcap)
    # The causal bound: the query's aligned key position (T_b = seqlens_k[b] + 1 keys).
    bound = "p + seqlens_k[b] + 1 - P" if past else "p"
    conditions = ["m <= seqlens_k[b]"]
    if causal:
        conditions.append(f"m <= {bound}")
        if window > 0:
            b.param("window", "int", window)
            conditions.append(f"m > {bound} - window")
    head = "h // G" if grouped else "h"
    b.stmt(f"QK[b, h, m, p] = Q[b, h, p, e] * K[b, {head}, m, e] :: sum(e) "
           f"if {' and '.join(conditions)}")  # fmt: skip
    scores = "QK[b, h, m, p] * scale"
    if softcap:
        scores = f"softcap * tanh({scores} / softcap)"
    if bias:
        scores = f"{scores} + bias[b, h, p, m]"
    b.stmt(f"S[b, h, m, p] = {scores}")
    b.stmt("GM[b, h, p] = S[b, h, m, p] :: max(m)")
    b.stmt("SN[b, h, m, p] = exp(S[b, h, m, p] - GM[b, h, p])")
    b.stmt("SD[b, h, p] = SN[b, h, m, p] :: sum(m)")
    b.stmt("A[b, h, m, p] = SN[b, h, m, p] / SD[b, h, p]")
    b.stmt(f"AV[b, h, p, f] = A[b, h, m, p] * V[b, {head}, m, f] :: sum(m)")
    return b.output("AV").build()


def _notes(node: ir.Node, given: dict, causal: bool, window: int, packed: bool) -> list[str]:
    notes = [
        f"keys m > seqlens_k[b] are hidden ('{given['seqlens_k'].name}': each entry holds "
        "seqlens_k[b] + 1 keys)",
    ]
    if packed:
        notes.append("Q, K, V are packed in the query input: the cascade's K, V are its parts")
    if given["past_key"] is not None:
        notes.append(
            "K and V are the first seqlens_k[b] + 1 - P rows of past_key/past_value followed "
            "by the new keys; causal is bottom-right per batch entry"
        )
    else:
        notes.append("no past: onnxruntime needs as many keys as queries (prefill)")
    if window > 0 and causal:
        notes.append(f"local_window_size {window}: the {window} most recent keys, its own included")
    if _int(node, "qk_output"):
        notes.append("the op also outputs the scores (qk_output)")
    return notes


def _unsupported(node: ir.Node, given: dict) -> list[str]:
    """What the op computes that the cascade does not (such a site is never rewritten)."""
    found = []
    if _int(node, "do_rotary"):
        found.append("rotary embedding of Q and K (do_rotary=1)")
    if given["q_norm_weight"] is not None:
        found.append("RMS norm of Q and K (q_norm_weight)")
    if _int(node, "smooth_softmax") or given["head_sink"] is not None:
        found.append("a smooth softmax / head sink in the denominator")
    if given["k_scale"] is not None or _int(node, "sliding_window_cache"):
        found.append("a quantized or window-sized KV cache")
    return found


def _int(node: ir.Node, name: str, default: int = 0) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()
