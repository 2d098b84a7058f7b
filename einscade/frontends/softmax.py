"""Softmax attention and its variants as one 3-pass cascade (FuseMax's form).

:func:`softmax_attention` covers the options of the attention kernels in common use:
grouped-query heads, causal masks in both alignments, sliding windows, attention sinks,
packed documents, prefix-LM, logit soft-capping, an additive bias and ALiBi. Every variant
keeps the same statement names (``QK, S, GM, SN, SD, A, AV``) so the compiler passes that
derive the 2-pass and 1-pass forms see one shape; only the score map ``S`` and the mask
predicate on ``QK`` change.

Example: ``print_cascade(softmax_attention(causal=True, kv_heads=True))`` prints::

    cascade @softmax_attention(Q[b, h, p, e], K[b, hk, m, e], V[b, hk, m, f]) -> (AV) {
      size G = H // HK
      param scale: float = 1 / sqrt(E)
      QK[b, h, m, p] = Q[b, h, p, e] * K[b, h // G, m, e] :: sum(e) if m <= p
      S[b, h, m, p] = QK[b, h, m, p] * scale
      GM[b, h, p] = S[b, h, m, p] :: max(m)
      SN[b, h, m, p] = exp(S[b, h, m, p] - GM[b, h, p])
      SD[b, h, p] = SN[b, h, m, p] :: sum(m)
      A[b, h, m, p] = SN[b, h, m, p] / SD[b, h, p]
      AV[b, h, p, f] = A[b, h, m, p] * V[b, h // G, m, f] :: sum(m)
    }

More options only grow the predicate and ``S``: ``window=(3, 0), sinks=2`` adds
``param window_left: int = 3`` and ``param sinks: int = 2`` and the predicate becomes
``m <= p and m >= p - window_left or m < sinks``; ``softcap=30.0, bias=True`` makes
``S[b, h, m, p] = softcap * tanh(QK[b, h, m, p] * scale / softcap) + bias[b, h, p, m]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einscade.frontends.builder import CascadeBuilder
from einscade.ir.cascade import Cascade

# Score tensor indices, shared by every statement of the cascade.
_SCORE = "[b, h, m, p]"
_ROW = "[b, h, p]"


@dataclass(frozen=True, slots=True)
class _Window:
    """Bounds of a sliding window around the aligned query position; None = unbounded."""

    left: int | None
    right: int | None


def softmax_attention(
    *,
    causal: bool | str = False,
    kv_heads: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    bias: bool = False,
    alibi: bool = False,
    window: int | tuple[int | None, int | None] | None = None,
    sinks: int = 0,
    documents: bool = False,
    prefix_lm: bool = False,
) -> Cascade:
    """The softmax attention cascade ``AV[b, h, p, f]`` with the chosen options.

    Inputs are in SDPA layout: ``Q[b, h, p, e]``, ``K[b, h, m, e]``, ``V[b, h, m, f]``.
    Query ``p`` and key ``m`` lengths may differ (cross attention) unless an option needs a
    shared position (``documents``, ``prefix_lm``).

    Args:
        causal: False; True or ``"top_left"`` (key ``m`` visible iff ``m <= p``); or
            ``"bottom_right"`` (the last query aligned with the last key, as in KV-cache
            decoding: ``m - M <= p - P``; with ``P > M`` the first ``P - M`` rows see no key
            and give 0).
        kv_heads: grouped-query / multi-query attention: K and V are ``[b, hk, m, *]`` with
            ``HK`` dividing ``H``; query head ``h`` reads KV head ``h // G`` with
            ``size G = H // HK`` (K and V are never repeated).
        scale: default of ``param scale`` (None: ``1 / sqrt(E)``); the scores are
            ``QK * scale``.
        softcap: ``c`` caps the scaled scores ``s`` to ``c * tanh(s / c)`` (``param softcap``).
        bias: add input ``bias[b, h, p, m]`` (dims of size 1 broadcast: ``[1, H, P, M]``).
        alibi: add ``slopes[h] * (m - p)`` from input ``slopes[h]``. With positive slopes
            this penalizes keys before the query linearly in their distance (ALiBi's
            ``-slope * (p - m)``). Cross attention needs no alignment shift: a shift is
            constant along a query row and cancels in the softmax.
        window: ``w`` (same as ``(w, w)``) or ``(left, right)``: key ``m`` visible iff
            ``c - left <= m <= c + right`` where ``c`` is the aligned query position
            (``p``, or ``p + M - P`` for bottom-right causal). A side given as None or a
            negative number is unbounded. With ``causal`` the right side is 0.
            The bounds become ``param window_left: int`` / ``param window_right: int``;
            run-time values are taken literally (``window_right=-1`` hides the query's own
            position). The window also limits a prefix-LM prefix.
        sinks: ``S > 0`` keeps the first ``S`` keys visible to every query whatever the
            causal / window / prefix mask says (``param sinks: int = S``); it needs one of
            those masks to widen.
        documents: input ``doc[b, m]`` of integer document ids of a packed sequence (self
            attention): key visible iff ``doc[b, m] == doc[b, p]``. Documents isolate hard:
            sinks do not cross them.
        prefix_lm: input ``prefix[b]`` of prefix lengths: key visible iff
            ``m < prefix[b]`` or it passes the causal mask (top-left unless
            ``causal="bottom_right"``).

    Score order: scale, softcap, bias, ALiBi; the mask is the predicate of ``QK``. A query
    row with no visible key gives exactly 0 (its reductions are over no points).
    """
    alignment = _alignment(causal)
    _check_sinks(sinks)
    builder = CascadeBuilder("softmax_attention", inputs=_qkv_inputs(kv_heads))
    if kv_heads:
        builder.size("G", "H // HK")
    builder.param("scale", "float", "1 / sqrt(E)" if scale is None else _number(scale, "scale"))
    if softcap is not None:
        builder.param("softcap", "float", _number(softcap, "softcap"))
    _declare_lookups(builder, bias, alibi, documents, prefix_lm)
    predicate = _mask_predicate(builder, alignment, window, sinks, documents, prefix_lm)
    kv_head = "h // G" if kv_heads else "h"
    qk = f"QK{_SCORE} = Q[b, h, p, e] * K[b, {kv_head}, m, e] :: sum(e)"
    builder.stmt(qk if predicate is None else f"{qk} if {predicate}")
    builder.stmt(f"S{_SCORE} = {_score_expr(softcap is not None, bias, alibi)}")
    _softmax_and_values(builder, kv_head)
    return builder.build()


def _qkv_inputs(kv_heads: bool) -> list[str]:
    heads = "hk" if kv_heads else "h"
    return ["Q[b, h, p, e]", f"K[b, {heads}, m, e]", f"V[b, {heads}, m, f]"]


def _declare_lookups(
    builder: CascadeBuilder, bias: bool, alibi: bool, documents: bool, prefix_lm: bool
) -> None:
    if bias:
        builder.input("bias[b, h, p, m]")
    if alibi:
        builder.input("slopes[h]")
    if documents:
        builder.input("doc[b, m]")
    if prefix_lm:
        builder.input("prefix[b]")


def _score_expr(softcap: bool, bias: bool, alibi: bool) -> str:
    """The score map in the fixed order scale, softcap, bias, ALiBi."""
    score = f"QK{_SCORE} * scale"
    if softcap:
        score = f"softcap * tanh({score} / softcap)"
    if bias:
        score = f"{score} + bias[b, h, p, m]"
    if alibi:
        score = f"{score} + slopes[h] * (m - p)"
    return score


def _softmax_and_values(builder: CascadeBuilder, kv_head: str) -> None:
    """FuseMax's 3-pass tail: row max, numerator, denominator, normalize, weight V."""
    builder.stmt(f"GM{_ROW} = S{_SCORE} :: max(m)")
    builder.stmt(f"SN{_SCORE} = exp(S{_SCORE} - GM{_ROW})")
    builder.stmt(f"SD{_ROW} = SN{_SCORE} :: sum(m)")
    builder.stmt(f"A{_SCORE} = SN{_SCORE} / SD{_ROW}")
    builder.stmt(f"AV[b, h, p, f] = A{_SCORE} * V[b, {kv_head}, m, f] :: sum(m)")
    builder.output("AV")


# -- masks -----------------------------------------------------------------------------


def _alignment(causal: bool | str) -> str | None:
    """None (not causal), "top_left" or "bottom_right"."""
    if causal is False or causal is None:
        return None
    if causal is True or causal == "top_left":
        return "top_left"
    if causal == "bottom_right":
        return "bottom_right"
    raise ValueError(
        f"softmax_attention: causal must be False, True, 'top_left' or 'bottom_right', "
        f"got {causal!r}"
    )


def _window_bounds(window: int | tuple[int | None, int | None] | None) -> _Window | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int | tuple | list):
        raise ValueError(
            f"softmax_attention: window must be an int or (left, right), got {window!r}"
        )
    sides = (window, window) if isinstance(window, int) else tuple(window)
    if len(sides) != 2:
        raise ValueError(f"softmax_attention: window needs (left, right), got {window!r}")
    for side in sides:
        if side is not None and (isinstance(side, bool) or not isinstance(side, int)):
            raise ValueError(f"softmax_attention: window side {side!r} is not an int or None")
    left, right = (None if s is None or s < 0 else s for s in sides)
    return None if left is None and right is None else _Window(left, right)


def _check_sinks(sinks: int) -> None:
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"softmax_attention: sinks must be an int >= 0, got {sinks!r}")


def _mask_predicate(
    builder: CascadeBuilder,
    alignment: str | None,
    window: int | tuple[int | None, int | None] | None,
    sinks: int,
    documents: bool,
    prefix_lm: bool,
) -> str | None:
    """``((prefix or causal) and window) or sinks``, then ``and`` documents; params declared."""
    # Positions in the query's aligned coordinates: key m vs query p (+ M - P).
    key, query = ("m - M", "p - P") if alignment == "bottom_right" else ("m", "p")
    clauses: list[str] = []
    if alignment is not None or prefix_lm:
        causal_clause = f"{key} <= {query}"
        if prefix_lm:
            causal_clause = f"m < prefix[b] or {causal_clause}"
        clauses.append(causal_clause)
    bounds = _window_bounds(window)
    if bounds is not None and bounds.left is not None:
        builder.param("window_left", "int", bounds.left)
        clauses.append(f"{key} >= {query} - window_left")
    # Causal already bounds the right side at 0; a wider right bound would be dead text.
    if bounds is not None and bounds.right is not None and alignment is None:
        builder.param("window_right", "int", bounds.right)
        clauses.append(f"{key} <= {query} + window_right")
    predicate = " and ".join(f"({c})" if " or " in c and len(clauses) > 1 else c for c in clauses)
    if sinks and not predicate:
        raise ValueError(
            f"softmax_attention: sinks={sinks} has nothing to widen; "
            "it needs causal, a bounded window or prefix_lm"
        )
    if sinks:
        builder.param("sinks", "int", sinks)
        predicate = f"{predicate} or m < sinks"
    if documents:
        same_doc = "doc[b, m] == doc[b, p]"
        predicate = f"({predicate}) and {same_doc}" if predicate else same_doc
    return predicate or None


def _number(value: object, name: str) -> str:
    """A float param default as IR text (ints are printed as floats: the param is a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"softmax_attention: {name} must be a finite number, got {value!r}")
    if name == "softcap" and value <= 0:
        raise ValueError(f"softmax_attention: softcap must be > 0, got {value!r}")
    return repr(float(value))
