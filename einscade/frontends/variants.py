"""Attention variants beyond softmax: linear, sigmoid, softplus, agent, channel, triplet.

Each builder returns a verified cascade named after the function. Inputs are in SDPA layout
(``Q[b, h, p, e]``, ``K[b, h, m, e]``, ``V[b, h, m, f]`` -> ``AV[b, h, p, f]``) unless its
docstring says otherwise, and intermediate names follow FuseMax (``QK``, ``S``, ``SN``,
``SD``, ``A``, ``AV``). ``kv_heads=True`` switches K and V to ``[b, hk, m, *]`` with
``size G = H // HK`` (grouped-query attention, K and V never repeated), as in
:func:`einscade.frontends.softmax.softmax_attention`.

Masks are predicates on the *map* statement ``S`` rather than on the reduction ``QK``: a
point removed from ``S`` is absent in every statement built from it, so a masked-out key
contributes nothing and a row with no key left gives ``AV = 0`` (its sums are over no points).

Example: ``print_cascade(linear_attention())`` prints::

    cascade @linear_attention(Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]) -> (AV) {
      FQ[b, h, p, e] = elu(Q[b, h, p, e]) + 1
      FK[b, h, m, e] = elu(K[b, h, m, e]) + 1
      S[b, h, m, p] = FQ[b, h, p, e] * FK[b, h, m, e] :: sum(e)
      SD[b, h, p] = S[b, h, m, p] :: sum(m)
      SNV[b, h, p, f] = S[b, h, m, p] * V[b, h, m, f] :: sum(m)
      AV[b, h, p, f] = SNV[b, h, p, f] / SD[b, h, p]
    }
"""

from __future__ import annotations

import math

from einscade.frontends.builder import CascadeBuilder
from einscade.ir.cascade import Cascade

__all__ = [
    "FEATURE_MAPS",
    "agent_attention",
    "channel_attention",
    "linear_attention",
    "sigmoid_attention",
    "softplus_attention",
    "triplet_attention",
]

# phi of linear attention as an IR expression of its argument ``{x}``.
FEATURE_MAPS: dict[str, str] = {
    "elu+1": "elu({x}) + 1",
    "relu": "relu({x})",
    "identity": "{x}",
}

_SCORE = "[b, h, m, p]"
_ROW = "[b, h, p]"
_CAUSAL = "m <= p"


# -- shared pieces ---------------------------------------------------------------------


def _sdpa_builder(family: str, kv_heads: bool) -> tuple[CascadeBuilder, str, str]:
    """A builder with Q, K, V declared; returns it, K/V's head rank and the KV head index."""
    heads = "hk" if kv_heads else "h"
    inputs = ["Q[b, h, p, e]", f"K[b, {heads}, m, e]", f"V[b, {heads}, m, f]"]
    builder = CascadeBuilder(family, inputs=inputs)
    if kv_heads:
        builder.size("G", "H // HK")
    return builder, heads, ("h // G" if kv_heads else "h")


def _scale_param(builder: CascadeBuilder, family: str, scale: object, dim: str) -> None:
    """``param scale: float``, defaulting to ``1 / sqrt(dim)`` or to the given number."""
    builder.param("scale", "float", f"1 / sqrt({dim})" if scale is None else _number(family, scale))


def _number(family: str, value: object, name: str = "scale") -> str:
    """A float param default as IR text; ints print as floats since the param is a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{family}: {name} must be a finite number, got {value!r}")
    return repr(float(value))


def _check_causal(family: str, causal: object) -> None:
    if not isinstance(causal, bool):
        raise ValueError(f"{family}: causal must be True or False, got {causal!r}")


def _masked(stmt: str, causal: bool) -> str:
    return f"{stmt} if {_CAUSAL}" if causal else stmt


def _softmax(builder: CascadeBuilder, suffix: str, score: str, row: str, rank: str) -> None:
    """FuseMax's softmax over ``rank`` of ``S{suffix}``: GM, SN, SD, A (with the suffix)."""
    s, gm, sn, sd = (f"{t}{suffix}" for t in ("S", "GM", "SN", "SD"))
    builder.stmt(f"{gm}{row} = {s}{score} :: max({rank})")
    builder.stmt(f"{sn}{score} = exp({s}{score} - {gm}{row})")
    builder.stmt(f"{sd}{row} = {sn}{score} :: sum({rank})")
    builder.stmt(f"A{suffix}{score} = {sn}{score} / {sd}{row}")


# -- linear attention ------------------------------------------------------------------


def linear_attention(
    feature_map: str = "elu+1", causal: bool = False, *, kv_heads: bool = False
) -> Cascade:
    """Linear attention (Katharopoulos et al. 2020): softmax replaced by ``phi(q) . phi(k)``.

    ``AV[p] = sum_m S[m, p] V[m] / sum_m S[m, p]`` with ``S[m, p] = phi(Q[p]) . phi(K[m])``.

    Args:
        feature_map: ``phi``: ``"elu+1"`` (``elu(x) + 1``), ``"relu"`` or ``"identity"``.
        causal: False writes the quadratic form (scores ``S[b, h, m, p]``, then numerator
            ``SNV`` and denominator ``SD`` over ``m``), which the compiler's associativity
            rewrite turns into ``phi(Q) (phi(K)^T V)``. True writes the recurrence over the
            key/token rank ``m`` (self attention, ``P == M``): running state
            ``KV[b, hk, e, f, m + 1] = KV[.., m] + FK[m] V[m]`` and key sum ``Z``; token
            ``m``'s numerator ``SNV`` and denominator ``SD`` read ``FQ`` at ``m``, and
            ``AV[b, h, p, f]`` divides them after the loop.
        kv_heads: K and V have ``HK`` heads shared by groups of ``G = H // HK`` query heads.

    There is no ``eps`` in the denominator (as in the formula): with ``relu`` or
    ``identity`` a zero denominator gives a non-finite output.
    """
    family = "linear_attention"
    if feature_map not in FEATURE_MAPS:
        known = ", ".join(repr(k) for k in FEATURE_MAPS)
        raise ValueError(f"{family}: unknown feature_map {feature_map!r}; expected one of {known}")
    _check_causal(family, causal)
    builder, heads, kv = _sdpa_builder(family, kv_heads)
    phi = FEATURE_MAPS[feature_map]
    builder.stmt(f"FQ[b, h, p, e] = {phi.format(x='Q[b, h, p, e]')}")
    builder.stmt(f"FK[b, {heads}, m, e] = {phi.format(x=f'K[b, {heads}, m, e]')}")
    if causal:
        _causal_linear_body(builder, heads, kv)
    else:
        builder.stmt(f"S{_SCORE} = FQ[b, h, p, e] * FK[b, {kv}, m, e] :: sum(e)")
        builder.stmt(f"SD{_ROW} = S{_SCORE} :: sum(m)")
        builder.stmt(f"SNV[b, h, p, f] = S{_SCORE} * V[b, {kv}, m, f] :: sum(m)")
        builder.stmt(f"AV[b, h, p, f] = SNV[b, h, p, f] / SD{_ROW}")
    builder.output("AV")
    return builder.build()


def _causal_linear_body(builder: CascadeBuilder, heads: str, kv: str) -> None:
    """The recurrence over ``m``; the state lives per KV head so GQA shares it."""
    builder.begin_iterate("m")
    builder.stmt(f"KV[b, {heads}, e, f, 0] = 0")
    builder.stmt(f"Z[b, {heads}, e, 0] = 0")
    builder.stmt(
        f"KV[b, {heads}, e, f, m + 1] = "
        f"KV[b, {heads}, e, f, m] + FK[b, {heads}, m, e] * V[b, {heads}, m, f]"
    )
    builder.stmt(f"Z[b, {heads}, e, m + 1] = Z[b, {heads}, e, m] + FK[b, {heads}, m, e]")
    # Self attention: token m is both the newest key and the query read here.
    builder.stmt(f"SNV[b, h, m, f] = FQ[b, h, m, e] * KV[b, {kv}, e, f, m + 1] :: sum(e)")
    builder.stmt(f"SD[b, h, m] = FQ[b, h, m, e] * Z[b, {kv}, e, m + 1] :: sum(e)")
    builder.end_iterate()
    builder.stmt(f"AV[b, h, p, f] = SNV[b, h, p, f] / SD{_ROW}")


# -- sigmoid and softplus attention ----------------------------------------------------


def sigmoid_attention(
    causal: bool = False, scale: float | None = None, *, kv_heads: bool = False
) -> Cascade:
    """Sigmoid attention (Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for
    Sigmoid Self-Attention"): ``A = sigmoid(QK * scale + sigmoid_bias)``, no normalization.

    ``param sigmoid_bias: float = 0.0``; the paper recommends ``b = -log(n)`` with ``n`` the
    sequence length, passed at run time (``sigmoid_bias=-math.log(M)``). ``scale`` is the
    default of ``param scale`` (None: ``1 / sqrt(E)``). ``causal`` keeps keys ``m <= p``;
    masked keys contribute nothing.
    """
    family = "sigmoid_attention"
    _check_causal(family, causal)
    builder, _, kv = _sdpa_builder(family, kv_heads)
    _scale_param(builder, family, scale, "E")
    builder.param("sigmoid_bias", "float", "0.0")
    builder.stmt(f"QK{_SCORE} = Q[b, h, p, e] * K[b, {kv}, m, e] :: sum(e)")
    builder.stmt(_masked(f"S{_SCORE} = QK{_SCORE} * scale + sigmoid_bias", causal))
    builder.stmt(f"A{_SCORE} = sigmoid(S{_SCORE})")
    builder.stmt(f"AV[b, h, p, f] = A{_SCORE} * V[b, {kv}, m, f] :: sum(m)")
    builder.output("AV")
    return builder.build()


def softplus_attention(
    causal: bool = False, scale: float | None = None, *, kv_heads: bool = False
) -> Cascade:
    """Softplus attention: ``SN = softplus(QK * scale)`` normalized by its sum over keys.

    ``A[m, p] = SN[m, p] / SD[p]`` (l1 normalization over ``m``; SN > 0, so SD > 0 unless
    a row has no key). ``causal`` keeps keys ``m <= p``; a row whose keys are all masked
    gives ``AV = 0`` (``SD = 0`` but ``A`` has no points there).
    """
    family = "softplus_attention"
    _check_causal(family, causal)
    builder, _, kv = _sdpa_builder(family, kv_heads)
    _scale_param(builder, family, scale, "E")
    builder.stmt(f"QK{_SCORE} = Q[b, h, p, e] * K[b, {kv}, m, e] :: sum(e)")
    builder.stmt(_masked(f"S{_SCORE} = QK{_SCORE} * scale", causal))
    builder.stmt(f"SN{_SCORE} = softplus(S{_SCORE})")
    builder.stmt(f"SD{_ROW} = SN{_SCORE} :: sum(m)")
    builder.stmt(f"A{_SCORE} = SN{_SCORE} / SD{_ROW}")
    builder.stmt(f"AV[b, h, p, f] = A{_SCORE} * V[b, {kv}, m, f] :: sum(m)")
    builder.output("AV")
    return builder.build()


# -- agent attention -------------------------------------------------------------------


def agent_attention(
    n_agents: int, scale: float | None = None, *, kv_heads: bool = False
) -> Cascade:
    """Agent attention (Han et al. 2024): two chained softmax attentions through agents.

    Input ``AG[b, h, a, e]`` holds ``A = n_agents`` agent tokens per query head (the paper
    pools them from Q). Stage 1, agent aggregation: the agents attend to the keys,
    ``AGV[b, h, a, f] = softmax_m(AG . K * scale) V``. Stage 2, agent broadcast: the
    queries attend to the agents, ``AV[b, h, p, f] = softmax_a(Q . AG * scale) AGV``.
    The paper's agent bias and depthwise-conv term on V are left out (they add to the
    scores / the output outside the cascade). Tensors of stage 1 end in 1, of stage 2 in 2.
    """
    family = "agent_attention"
    if isinstance(n_agents, bool) or not isinstance(n_agents, int) or n_agents < 1:
        raise ValueError(f"{family}: n_agents must be a positive int, got {n_agents!r}")
    builder, _, kv = _sdpa_builder(family, kv_heads)
    builder.input("AG[b, h, a, e]")
    builder.size("A", n_agents)
    _scale_param(builder, family, scale, "E")
    agents, queries = "[b, h, m, a]", "[b, h, a, p]"
    builder.stmt(f"QK1{agents} = AG[b, h, a, e] * K[b, {kv}, m, e] :: sum(e)")
    builder.stmt(f"S1{agents} = QK1{agents} * scale")
    _softmax(builder, "1", agents, "[b, h, a]", "m")
    builder.stmt(f"AGV[b, h, a, f] = A1{agents} * V[b, {kv}, m, f] :: sum(m)")
    builder.stmt(f"QK2{queries} = Q[b, h, p, e] * AG[b, h, a, e] :: sum(e)")
    builder.stmt(f"S2{queries} = QK2{queries} * scale")
    _softmax(builder, "2", queries, _ROW, "a")
    builder.stmt(f"AV[b, h, p, f] = A2{queries} * AGV[b, h, a, f] :: sum(a)")
    builder.output("AV")
    return builder.build()


# -- channel attention -----------------------------------------------------------------


def channel_attention(scale: float | None = None) -> Cascade:
    """DaViT channel attention (Ding et al. 2022): channels attend to channels, the token
    rank ``n`` being reduced in the scores.

    Inputs ``Q[b, h, n, c]``, ``K[b, h, n, d]``, ``V[b, h, n, d]`` (``n`` tokens, ``c`` and
    ``d`` the channels of a head, ``C == D``). ``QK[b, h, c, d] = sum_n Q K``, softmax over
    ``d``, ``AV[b, h, n, c] = sum_d A[b, h, c, d] V[b, h, n, d]``. DaViT scales q by
    ``head_dim ** -0.5``, so ``scale`` defaults to ``1 / sqrt(C)``.
    """
    family = "channel_attention"
    builder = CascadeBuilder(family, inputs=["Q[b, h, n, c]", "K[b, h, n, d]", "V[b, h, n, d]"])
    _scale_param(builder, family, scale, "C")
    score = "[b, h, c, d]"
    builder.stmt(f"QK{score} = Q[b, h, n, c] * K[b, h, n, d] :: sum(n)")
    builder.stmt(f"S{score} = QK{score} * scale")
    _softmax(builder, "", score, "[b, h, c]", "d")
    builder.stmt(f"AV[b, h, n, c] = A{score} * V[b, h, n, d] :: sum(d)")
    builder.output("AV")
    return builder.build()


# -- triplet (2-simplicial) attention --------------------------------------------------


def triplet_attention(scale: float | None = None) -> Cascade:
    """2-simplicial attention (Clift et al. 2019; Roy et al. 2025): each query attends to
    *pairs* of keys through a trilinear score.

    Inputs ``Q[b, h, p, e]``, ``K1[b, h, m, e]``, ``K2[b, h, l, e]``, ``V1[b, h, m, f]``,
    ``V2[b, h, l, f]``. ``S[b, h, m, l, p] = scale * sum_e Q K1 K2``, softmax jointly over
    ``(m, l)``, and ``AV[b, h, p, f] = sum_{m, l} A V1[m, f] V2[l, f]`` (the Kronecker, i.e.
    elementwise, product of the two values). The scores hold ``M * L * P`` points per
    head, so this is for small sizes (or for passes that tile ``m`` and ``l``).
    """
    family = "triplet_attention"
    inputs = ["Q[b, h, p, e]", "K1[b, h, m, e]", "K2[b, h, l, e]"]
    builder = CascadeBuilder(family, inputs=[*inputs, "V1[b, h, m, f]", "V2[b, h, l, f]"])
    _scale_param(builder, family, scale, "E")
    score = "[b, h, m, l, p]"
    builder.stmt(f"QKK{score} = Q[b, h, p, e] * K1[b, h, m, e] * K2[b, h, l, e] :: sum(e)")
    builder.stmt(f"S{score} = QKK{score} * scale")
    _softmax(builder, "", score, _ROW, "m, l")
    builder.stmt(f"AV[b, h, p, f] = A{score} * V1[b, h, m, f] * V2[b, h, l, f] :: sum(m, l)")
    builder.output("AV")
    return builder.build()
