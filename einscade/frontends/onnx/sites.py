"""Find attention sites in an ONNX model and lift each into a cascade.

A *site* is one match of a pattern in :mod:`einscade.frontends.onnx.patterns`, in the main
graph or in a model-local function. Its record names the ONNX values of Q, K, V, mask and
output, the head layout, the scale, and its cascade: :func:`~einscade.frontends.softmax.
softmax_attention`, or the builder of the family a constant mask was recognised as (the
``recognise`` hook, :mod:`einscade.frontends.onnx.masks`). com.microsoft ops are lifted in
:mod:`einscade.frontends.onnx.microsoft` and :mod:`einscade.frontends.onnx.group_query`.
Every Softmax that no site covers is reported as a *miss* with the reason onnxscript's
matcher (or our check) gave.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from einscade.frontends.onnx import microsoft
from einscade.frontends.onnx.group_query import lift_group_query
from einscade.frontends.onnx.masks import cascade_for, recognise_constant
from einscade.frontends.onnx.misses import Miss, find_misses
from einscade.frontends.onnx.patterns import FAMILIES, SCALE_PLACES, SCALE_VARS, SCALING_TAGS
from einscade.frontends.onnx.progress import QUIET, Steps
from einscade.frontends.onnx.records import (
    ConstantLookup,
    MaskInfo,
    Recogniser,
    Site,
    SiteValues,
    layout_of,
    shapes_of,
)
from einscade.frontends.onnx.shapes import escapes, node_name, same_dim

# Turns a constant mask into the structure the cascade's predicate is built from (causal,
# windows, neighborhood, blocks, ...). Set to None to lift every constant mask as a bias.
recognise: Recogniser | None = recognise_constant

__all__ = ["Discovery", "Site", "SiteValues", "find_sites", "recognise"]


@dataclass(frozen=True)
class Discovery:
    sites: tuple[Site, ...]
    misses: tuple[Miss, ...]


def find_sites(model: ir.Model, steps: Steps = QUIET) -> Discovery:
    """All attention sites of the model's graph and local functions, plus near misses
    (``steps`` shows a progress bar per graph or function)."""
    constants = ConstantLookup(model, recognise)
    sites: list[Site] = []
    misses: list[Miss] = []
    for label, container in _containers(model):
        claimed: set[ir.Node] = set()
        order = {node: k for k, node in enumerate(container)}
        for node in steps.track(list(container), len(order), f"finding attention in {label}"):
            if node in claimed:
                continue
            found = _match(model, container, node)
            if found is None:
                continue
            family, match, shared = found
            nodes = tuple(sorted(set(match.nodes), key=order.__getitem__))
            claimed.update(nodes)
            lift = _LIFTERS[family]
            sites.append(lift(len(sites), label, (nodes, shared), match, constants))
        misses.extend(find_misses(model, label, container, claimed))
    return Discovery(tuple(sites), tuple(misses))


def _containers(model: ir.Model) -> Iterator[tuple[str, ir.Graph | ir.Function]]:
    yield "graph", model.graph
    for function in model.functions.values():
        yield f"function {function.domain}::{function.name}", function


def _match(model, container, node) -> tuple[str, pattern.MatchResult, tuple] | None:
    """(family, match, shared nodes) of the first pattern variant that matches at ``node``."""
    for family, variants in FAMILIES:
        # One Attention node may have present_key/present_value readers: the site still
        # counts, and the rewrite decides (a chain's intermediates must have no other reader).
        removable = family == "decomposed"
        for variant in variants:
            match = variant.match(model, container, node, check_nodes_are_removable=removable)
            if match:
                return family, match, ()
    # Exporters share a Q or K prefix (the sqrt-scale Mul, a transpose) between attention
    # calls on the same tensors. Such a prefix is copied into every site that reads it.
    for variant in FAMILIES[0][1]:
        match = variant.match(model, container, node, check_nodes_are_removable=False)
        if match:
            shared = _shared_prefix(match, node)
            if shared is not None:
                return FAMILIES[0][0], match, shared
    return None


def _shared_prefix(match: pattern.MatchResult, root: ir.Node) -> tuple[ir.Node, ...] | None:
    """Matched nodes others also read, with their in-site producers; None if one of them
    is past the Q.K MatMul (then the chain itself is shared and the match fails)."""
    inside = set(match.nodes)
    stack = [n for n in inside if n is not root and escapes(n, inside)]
    shared: set[ir.Node] = set()
    while stack:
        node = stack.pop()
        if node not in shared:
            shared.add(node)
            producers = (v.producer() for v in node.inputs if v is not None)
            stack.extend(p for p in producers if p in inside)
    qk = next(n for n in inside if n.op_type == "MatMul" and n is not root)
    return tuple(shared) if shared <= _ancestors(qk, inside) else None


def _ancestors(node: ir.Node, inside: set[ir.Node]) -> set[ir.Node]:
    found: set[ir.Node] = set()
    stack = [v.producer() for v in node.inputs if v is not None]
    while stack:
        current = stack.pop()
        if current in inside and current not in found:
            found.add(current)
            stack.extend(v.producer() for v in current.inputs if v is not None)
    return found


# -- decomposed chains ----------------------------------------------------------------------


def _lift_decomposed(index, label, node_sets, match, constants: ConstantLookup) -> Site:
    nodes, shared = node_sets
    b = match.bindings
    query, value, mask = b["query"], b["value"], b["mask"]
    key, key_perm, key_reshape, key_note = _key_source(b)
    scale, scale_form, scale_notes = _decomposed_scale(b, constants)
    q_shape, kt_shape = query.shape, b["key_t"].shape
    kv_heads = _broadcast_kv_heads(q_shape, kt_shape)
    window, info, window_notes = _window(b, constants)
    cascade, mask_notes = cascade_for(
        info.recognised, has_mask=mask is not None or window is not None, kv_heads=kv_heads,
        scale=_cascade_scale(scale, _head_dim(q_shape, kt_shape)),
    )  # fmt: skip
    notes = [*key_note, *scale_notes, *info.notes, *window_notes, *mask_notes]
    notes += _cast_notes(b, query)
    if b["guarded"]:
        notes.append("IsNaN/Where guard: fully masked rows give 0")
    notes += [f"{node_name(n)} is shared with other readers: copied into the site" for n in shared]
    return Site(
        index=index,
        family="decomposed",
        container=label,
        node_names=tuple(node_name(n) for n in nodes),
        q=query.name or "",
        k=(key or b["key_t"]).name or "",
        v=value.name or "",
        mask=None if mask is None else mask.name,
        output=match.outputs[0].name or "",
        shapes=shapes_of(Q=query, **{"K^T": b["key_t"]}, V=value, mask=mask, out=match.outputs[0]),
        layout=layout_of(q_shape),
        scale=scale,
        scale_form=scale_form,
        causal=False,
        kv_heads=kv_heads,
        mask_form=info.form,
        notes=tuple(notes),
        cascade=cascade,
        values=SiteValues(
            nodes,
            shared,
            match.outputs[0],
            query,
            key,
            key_perm,
            key_reshape,
            value,
            mask,
            window,
        ),
        mask_structure=info.recognised,
    )


def _window(b: dict, constants: ConstantLookup) -> tuple[tuple | None, MaskInfo, list[str]]:
    """Swin's per-window mask, the site's mask info, and notes. With a window mask the bias
    input is the sum of both, so neither is recognised on its own."""
    info = constants.mask(b["mask"])
    if not b["windowed"]:
        return None, info, []
    window_mask = b["window_mask"]
    window = (b["window_shape"], window_mask, b["unwindow_shape"])
    form = constants.mask(window_mask).form
    notes = [
        f"window mask '{window_mask.name}' ({form}) is added to a per-window view of the "
        "scores (Swin's shifted windows); the bias input is its sum with the mask",
    ]
    mask_form = form if info.form is None else f"{info.form} + window mask {form}"
    return window, MaskInfo(mask_form, None, ()), notes


def _key_source(b: dict) -> tuple[ir.Value | None, tuple | None, tuple | None, list[str]]:
    """Where K as [..., M, E] comes from: (value, Transpose perm, Reshape shape, notes)."""
    key, key_t = b["key"], b["key_t"]
    if b["key_form"] == "transpose":
        perm = list(b["key_perm"].as_ints())
        perm[-2], perm[-1] = perm[-1], perm[-2]  # K = K^T with its last two axes swapped
        if perm == list(range(len(perm))):
            return key, None, None, []
        return key, tuple(perm), None, [f"K = Transpose({key.name}, perm={perm})"]
    if b["key_form"] == "flat_transpose":
        note = "K^T written as Reshape -> Transpose([0, 2, 1]) -> Reshape"
        if _swapped_last_two(key.shape, key_t.shape):
            return key, None, None, [note]
        if key_t.shape is not None and key_t.shape.is_static():
            # Reshapes compose row-major, so K is one Reshape of the source (GQA's repeat).
            dims = (*key_t.shape[:-2], key_t.shape[-1], key_t.shape[-2])
            return key, None, tuple(dims), [note, f"K = Reshape({key.name}, {list(dims)})"]
        return None, None, None, [note, "K cannot be named: the Reshapes have dynamic shapes"]
    rank = len(key.shape) if key.shape is not None else 4
    perm = (*range(rank - 2), rank - 1, rank - 2)
    return key, perm, None, ["K given already transposed (K^T); K = its last two axes swapped"]


def _swapped_last_two(key: ir.Shape | None, key_t: ir.Shape | None) -> bool:
    if key is None or key_t is None or len(key) != len(key_t) or len(key) < 2:
        return False
    swapped = [*key[:-2], key[-1], key[-2]]
    return all(same_dim(a, c) for a, c in zip(swapped, key_t, strict=True))


def _decomposed_scale(b: dict, constants: ConstantLookup) -> tuple[float | None, str, list[str]]:
    """The product of the scale factors on Q, K and the scores; None if one is not constant."""
    scale, places, notes = 1.0, [], []
    for tag in SCALING_TAGS:
        op = b[tag]
        if op is None:
            continue
        operand = b[SCALE_VARS[tag]]
        places.append(f"{op} on {SCALE_PLACES[tag]}")
        tensor = constants.tensor(operand)
        if tensor is None or tensor.size != 1:
            notes.append(f"scale '{operand.name}' is computed at run time")
            scale = None
            continue
        factor = float(tensor.reshape(-1)[0])
        if scale is not None:
            scale *= factor if op == "Mul" else 1.0 / factor
    form = ", ".join(places) if places else "none (scale 1)"
    return scale, form, notes


def _head_dim(q_shape: ir.Shape | None, kt_shape: ir.Shape | None) -> int | None:
    """E from Q [..., E] or, where Q has no shape (a function input), from K^T [..., E, M]."""
    for shape, axis in ((q_shape, -1), (kt_shape, -2)):
        if shape is not None and len(shape) >= 2 and isinstance(shape[axis], int):
            return shape[axis]
    return None


def _cascade_scale(scale: float | None, head_dim: int | None) -> float | None:
    """The cascade's scale default: None (its ``1 / sqrt(E)``) when it is that value, else
    the scale at float32 precision (``0.35``, not the float64 product ``0.3499999940...``)."""
    if scale is None:
        return None
    if isinstance(head_dim, int) and math.isclose(scale, head_dim**-0.5, rel_tol=1e-6):
        return None
    return float(str(np.float32(scale)))


def _broadcast_kv_heads(q: ir.Shape | None, kt: ir.Shape | None) -> bool:
    """MatMul broadcasting a K with one head over Q's heads is multi-query attention."""
    if q is None or kt is None or len(q) < 3 or len(kt) != len(q):
        return False
    return kt[-3] == 1 and q[-3] != 1


def _cast_notes(b: dict, query: ir.Value) -> list[str]:
    notes = []
    for key in ("pre_cast", "post_cast", "post_cast_2"):
        attr = b.get(key)
        if attr is not None:
            target = ir.DataType(attr.as_int())
            if query.dtype is not None and target != query.dtype:
                notes.append(f"softmax runs in {target.name.lower()} (Cast around Softmax)")
                break
    return notes


# -- the standard Attention op --------------------------------------------------------------


def _lift_attention_op(index, label, node_sets, match, constants: ConstantLookup) -> Site:
    nodes, _ = node_sets
    node = nodes[0]
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    query, key, value, mask, past_key = inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]
    attrs = node.attributes
    scale = attrs["scale"].as_float() if "scale" in attrs else None
    softcap = attrs["softcap"].as_float() if "softcap" in attrs else 0.0
    q_heads = attrs["q_num_heads"].as_int() if "q_num_heads" in attrs else None
    kv_heads_attr = attrs["kv_num_heads"].as_int() if "kv_num_heads" in attrs else None
    kv_heads = _attention_kv_heads(query.shape, key.shape, q_heads, kv_heads_attr)
    causal: bool | str = bool(attrs["is_causal"].as_int()) if "is_causal" in attrs else False
    notes = []
    if past_key is not None:
        notes.append("K and V are concatenated after past_key/past_value")
        if causal:
            causal = "bottom_right"
            notes.append("causal is offset by the past length (bottom-right when P = new keys)")
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
        notes.append("present_key/present_value or qk outputs are used")
    info = constants.mask(mask)
    cascade, mask_notes = cascade_for(
        info.recognised, has_mask=mask is not None, causal=causal, kv_heads=kv_heads,
        scale=scale, softcap=softcap or None,
    )  # fmt: skip
    layout = layout_of(query.shape)
    if q_heads is not None:
        layout = f"[batch, tokens, heads*dim] (q_num_heads={q_heads}, kv_num_heads={kv_heads_attr})"
    return Site(
        index=index,
        family="attention-op",
        container=label,
        node_names=(node_name(node),),
        q=query.name or "",
        k=key.name or "",
        v=value.name or "",
        mask=None if mask is None else mask.name,
        output=node.outputs[0].name or "",
        shapes=shapes_of(Q=query, K=key, V=value, mask=mask, out=node.outputs[0]),
        layout=layout,
        scale=scale,
        scale_form="attribute" if scale is not None else "default 1/sqrt(E)",
        causal=causal,
        kv_heads=kv_heads,
        mask_form=info.form,
        notes=(*notes, *info.notes, *mask_notes),
        cascade=cascade,
        values=SiteValues(nodes, (), node.outputs[0], query, key, None, None, value, mask),
        mask_structure=info.recognised,
    )


def _attention_kv_heads(q, k, q_heads: int | None, kv_heads: int | None) -> bool:
    if q_heads is not None and kv_heads is not None:
        return q_heads != kv_heads
    if q is None or k is None or len(q) != 4 or len(k) != 4:
        return False
    return q[1] != k[1]


_LIFTERS = {
    "decomposed": _lift_decomposed,
    "attention-op": _lift_attention_op,
    "ms-attention": microsoft.lift_attention,
    "ms-mha": microsoft.lift_multi_head,
    "ms-gqa": lift_group_query,
}
