"""onnxscript rewriter patterns for the attention forms exporters write.

Each pattern is a :class:`onnxscript.rewriter.pattern.PatternBase`: ``pattern`` is written
like the exported graph, ``check`` raises ``MatchFailureError`` with a reason and the
offending node or value. We only *match* with them (the rewrite is ours, per site), so the
commuted variants (``Mul(s, x)`` as well as ``Mul(x, s)``, ``Add(mask, scores)``) are
built through ``RewriteRule.commute()`` and tried in turn.

Forms of the decomposed chain (torch dynamo at opsets 18-23 and the legacy exporter)::

    K^T  = Transpose(K, perm) | Reshape(Transpose(Reshape(K), [0, 2, 1])) | K^T as given
    S    = MatMul(Q [*|/ sq], K^T [*|/ sk]) [*|/ s]     # scale on scores, or sqrt on Q and K
    S    = S [+ mask]                                   # additive float mask or bias
    S    = [Reshape(Reshape(S, [B, W, H, P, M]) + window mask, back)]  # Swin's shifted windows
    A    = [Cast] Softmax([Cast] S, axis=last) [Cast]   # softmax in another precision
    A    = A [-> Where(IsNaN(A), 0, A)]                 # SDPA's fully-masked-row guard
    out  = MatMul(A, V)

Fused ops are sites too: the standard ``Attention`` (opset 23+) and com.microsoft's
``Attention`` (QKV projection included), ``MultiHeadAttention`` and ``GroupQueryAttention``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchFailureError

SCALING_TAGS = ("q_scaling", "k_scaling", "s_scaling")
SCALE_VARS = {"q_scaling": "q_scale", "k_scaling": "k_scale", "s_scaling": "s_scale"}
SCALE_PLACES = {"q_scaling": "Q", "k_scaling": "K", "s_scaling": "the scores"}


def _scaled(op, x, scale, tag: str):
    """``x * scale``, ``x / scale`` or ``x``; the tag records which one matched."""
    return pattern.OrValue(
        [op.Mul(x, scale), op.Div(x, scale), x], tag_var=tag, tag_values=("Mul", "Div", None)
    )


class DecomposedAttention(pattern.PatternBase):
    """MatMul -> [scale] -> [Add mask] -> Softmax -> [IsNaN guard] -> MatMul with V."""

    def pattern(self, op, query, key, value, mask, q_scale, k_scale, s_scale, guard_fill,
                window_shape, window_mask, unwindow_shape):  # fmt: skip
        key_perm = pattern.AttrVar("key_perm")
        key_t = pattern.OrValue(
            [
                op.Transpose(key, perm=key_perm),
                op.Reshape(op.Transpose(op.Reshape(key, pattern.ANY_VALUE), perm=[0, 2, 1]),
                           pattern.ANY_VALUE),
                key,
            ],
            name="key_t",
            tag_var="key_form",
            tag_values=("transpose", "flat_transpose", "pre_transposed"),
        )  # fmt: skip
        scores = op.MatMul(_scaled(op, query, q_scale, "q_scaling"),
                           _scaled(op, key_t, k_scale, "k_scaling"))  # fmt: skip
        scores = _scaled(op, scores, s_scale, "s_scaling")
        scores = pattern.OrValue(
            [op.Add(scores, mask), scores], tag_var="masked", tag_values=(True, False)
        )
        # Swin's shifted windows: a per-window mask added to a [B, windows, H, P, M] view.
        windowed = op.Reshape(op.Add(op.Reshape(scores, window_shape), window_mask),
                              unwindow_shape)  # fmt: skip
        scores = pattern.OrValue([windowed, scores], tag_var="windowed", tag_values=(True, False))
        # Softmax in another precision: Cast before it and one or two Casts after it. (Every
        # OrValue gets a tag_var: onnxscript 0.7.2 cannot commute an untagged one.)
        scores = pattern.OrValue(
            [op.Cast(scores, to=pattern.AttrVar("pre_cast")), scores],
            tag_var="pre_casts", tag_values=(1, 0),
        )  # fmt: skip
        axis = pattern.AttrVar("softmax_axis", can_match_none=True)
        weights = op.Softmax(scores, axis=axis)
        cast = op.Cast(weights, to=pattern.AttrVar("post_cast"))
        weights = pattern.OrValue(
            [op.Cast(cast, to=pattern.AttrVar("post_cast_2")), cast, weights],
            tag_var="post_casts", tag_values=(2, 1, 0),
        )  # fmt: skip
        guarded = op.Where(op.IsNaN(weights), guard_fill, weights)
        weights = pattern.OrValue([guarded, weights], tag_var="guarded", tag_values=(True, False))
        return op.MatMul(weights, value)

    def check(self, context, softmax_axis, guarded, guard_fill, **bindings) -> pattern.MatchResult:
        softmax = next(n for n in context.nodes if n.op_type == "Softmax")
        _check_softmax_axis(context.model, softmax, softmax_axis)
        for tag in SCALING_TAGS:
            if bindings[tag] is not None:
                _check_scalar(
                    bindings[SCALE_VARS[tag]], f"the {bindings[tag]} on {SCALE_PLACES[tag]}"
                )
        if guarded and scalar_value(guard_fill) != 0.0:
            raise MatchFailureError(
                "the Where after IsNaN(Softmax) does not fill with 0", guard_fill
            )
        return pattern.MatchResult()


class AttentionOp(pattern.PatternBase):
    """The standard ``Attention`` op (opset 23+), any optional inputs and attributes."""

    def pattern(self, op, query, key, value):
        return op.Attention(query, key, value, _allow_other_inputs=True,
                            _allow_other_attributes=True)  # fmt: skip

    def check(self, context, **_) -> pattern.MatchResult:
        if context.root.domain not in ("", "ai.onnx"):
            raise MatchFailureError("Attention of another domain", context.root)
        return pattern.MatchResult()


class MicrosoftAttention(pattern.PatternBase):
    """com.microsoft ``Attention``: the QKV projection and attention in one node."""

    def pattern(self, op, x, weights):
        return op.Attention(x, weights, _domain="com.microsoft", _allow_other_inputs=True,
                            _allow_other_attributes=True)  # fmt: skip


class MicrosoftMultiHeadAttention(pattern.PatternBase):
    """com.microsoft ``MultiHeadAttention`` (separate, packed-KV or packed-QKV inputs)."""

    def pattern(self, op, query):
        return op.MultiHeadAttention(query, _domain="com.microsoft", _allow_other_inputs=True,
                                     _allow_other_attributes=True)  # fmt: skip


class MicrosoftGroupQueryAttention(pattern.PatternBase):
    """com.microsoft ``GroupQueryAttention`` (separate or packed QKV, optional past)."""

    def pattern(self, op, query):
        return op.GroupQueryAttention(query, _domain="com.microsoft", _allow_other_inputs=True,
                                      _allow_other_attributes=True)  # fmt: skip


def _check_softmax_axis(model: ir.Model, softmax: ir.Node, axis_attr: ir.Attr | None) -> None:
    """Softmax must normalise over the key axis, the last one."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
    axis = axis_attr.as_int() if axis_attr is not None else (-1 if opset >= 13 else 1)
    shape = softmax.inputs[0].shape
    rank = len(shape) if shape is not None else None
    # Before opset 13 Softmax flattens from `axis` on; for the last axis both readings agree.
    if axis == -1 or (rank is not None and axis == rank - 1):
        return
    raise MatchFailureError(f"Softmax normalises axis {axis}, not the last (key) axis", softmax)


def _check_scalar(value: ir.Value, what: str) -> None:
    shape = value.shape
    if shape is not None and shape.is_static() and int(np.prod(shape.numpy(), dtype=np.int64)) == 1:
        return
    if scalar_value(value) is not None:  # initializer or Constant node of one element
        return
    raise MatchFailureError(
        f"{what} multiplies by '{value.name}' of shape {shape}, not a scalar", value
    )


def scalar_value(value: ir.Value | None) -> float | None:
    """The float of a one-element constant (initializer or Constant node), else None."""
    if value is None:
        return None
    tensor = value.const_value
    producer = value.producer()
    if tensor is None and producer is not None and producer.op_type == "Constant":
        attr = producer.attributes.get("value")
        tensor = attr.value if attr is not None and not attr.is_ref() else None
    if tensor is None or tensor.size != 1:
        return None
    return float(np.asarray(tensor.numpy()).reshape(-1)[0])


def _never_rewrite(op, **_):
    raise AssertionError("einscade matches with these patterns and rewrites per site itself")


def commuted(matcher: pattern.PatternBase) -> tuple[pattern.RewriteRule, ...]:
    """The pattern with every choice of operand order for its Add and Mul nodes."""
    rule = pattern.RewriteRule(matcher.pattern, _never_rewrite, matcher.check, name=matcher.name)
    return tuple(rule.commute())


# (family, variants): tried in this order on every node of a graph or function.
FAMILIES: tuple[tuple[str, tuple[pattern.RewriteRule, ...]], ...] = (
    ("decomposed", commuted(DecomposedAttention())),
    ("attention-op", commuted(AttentionOp())),
    ("ms-attention", commuted(MicrosoftAttention())),
    ("ms-mha", commuted(MicrosoftMultiHeadAttention())),
    ("ms-gqa", commuted(MicrosoftGroupQueryAttention())),
)
