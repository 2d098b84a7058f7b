"""Find attention in the FX graph Dynamo hands a backend.

Two forms, anchored at each ``F.scaled_dot_product_attention`` call and at each softmax, so
that every softmax of the graph ends as a site or with the reason it is not one:

- ``sdpa``: the call itself (``attn_mask`` bool or additive, ``is_causal``, ``scale``,
  ``enable_gqa``; ``dropout_p`` must be 0).
- ``softmax``: hand-written attention, read outward from the softmax::

      S   = (Q [*|/ c]) @ K^T  |  einsum("..pe,..me->..pm")     # K^T: transpose/permute of K
      S   = S [* c | / c | + bias | - bias | masked_fill(mask, -big) | where(mask, S, -big)]*
      A   = softmax([cast] S, dim=-1) [cast | dropout(eval) | contiguous]*
      out = A @ V  |  einsum("..pm,..mf->..pf")

  Every link is optional and may repeat; scales multiply into one ``scale`` (a scale on Q or
  K^T is taken when it feeds only this product) and the additive parts become
  :class:`Term` s. A repeated K/V for grouped-query attention (``x[:, :, None]
  .expand(b, hk, g, n, d).reshape(b, hk * g, n, d)`` or ``repeat_interleave(x, g, dim=1)``)
  is read through: the cascade indexes ``K[b, h // G, m, e]`` instead.

Why a walk and not ``torch.fx`` subgraph patterns: the links above are optional and spelled
many ways (:mod:`einscade.frontends.fx.ops` folds the spellings), and a walk anchored at the
softmax can say exactly where a near miss left the form, which ``EINSCADE_DEBUG=1`` prints.
Nothing here changes the graph; :mod:`einscade.frontends.fx.replace` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.fx import Graph, Node

from einscade.frontends.fx import ops
from einscade.frontends.fx.forms import (
    NoMatch,
    einsum_av,
    einsum_parts,
    einsum_qk,
    read_through_repeat,
)
from einscade.frontends.mask_structure import MASKED_AT

Scalar = Callable[[object], float | None]  # a Python number or a constant one-element tensor


@dataclass(frozen=True)
class Operand:
    """A site input: ``node``, permuted by ``perm`` when given, in SDPA layout ``[..., N, D]``."""

    node: Node
    perm: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Term:
    """One additive part of the scores, times ``factor`` (the scales applied after it).

    ``add``: the float tensor ``node``; ``fill_true`` / ``fill_false``: ``fill`` where the
    bool ``node`` is True / False, 0 elsewhere.
    """

    kind: str
    node: Node
    factor: float = 1.0
    fill: float = 0.0
    # The scores' shape where the term is added when a reshape of the leading dims follows
    # (timm's Swin adds its window mask in a [b, windows, h, p, m] view); None: the shape the
    # softmax reads.
    at: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Match:
    """One attention site, read but not yet changed."""

    family: str  # "sdpa" or "softmax"
    anchor: Node  # the SDPA call or the softmax: debug lines name the site by it
    output: Node  # the node whose value the site computes
    q: Operand
    k: Operand
    v: Operand
    out_perm: tuple[int, ...] | None  # an einsum writing the output in another order
    scale: float | None  # None: SDPA's default 1 / sqrt(E)
    terms: tuple[Term, ...]
    causal: bool
    kv_heads: bool
    softmax_dtype: torch.dtype | None
    scores_shape: tuple | None  # the shape the softmax reads
    inner: tuple[Node, ...]  # nodes only the site reads: dead once it is replaced
    notes: tuple[str, ...] = ()
    # SDPA gives 0 for a query whose every score is -inf (its "safe softmax"); a softmax
    # written out gives NaN there, as does the cascade with such a bias.
    zero_empty_rows: bool = False


@dataclass(frozen=True)
class Skip:
    """A softmax or SDPA call left as it is, and why."""

    anchor: Node
    reason: str


def find_sites(graph: Graph, scalar: Scalar) -> tuple[list[Match], list[Skip]]:
    """Every SDPA call and softmax of ``graph``: a :class:`Match`, or a :class:`Skip`."""
    matches: list[Match] = []
    skips: list[Skip] = []
    for node in graph.nodes:
        family = ops.kind(node)
        if family not in ("sdpa", "softmax"):
            continue
        try:
            walk = _sdpa if family == "sdpa" else _softmax_chain
            matches.append(walk(node, scalar))
        except NoMatch as reason:
            skips.append(Skip(node, str(reason)))
    return matches, skips


# -- F.scaled_dot_product_attention ----------------------------------------------------------


def _sdpa(node: Node, scalar: Scalar) -> Match:
    q, k, v = (ops.arg(node, i, n) for i, n in enumerate(("query", "key", "value")))
    mask = ops.arg(node, 3, "attn_mask")
    dropout = ops.arg(node, 4, "dropout_p", 0.0)
    causal = ops.arg(node, 5, "is_causal", False)
    scale = ops.arg(node, 6, "scale")
    if not all(isinstance(x, Node) for x in (q, k, v)):
        raise NoMatch("query, key or value is not a tensor of the graph")
    if dropout != 0:
        raise NoMatch(f"dropout_p={dropout} is active (training)")
    if not isinstance(causal, bool):
        raise NoMatch(f"is_causal={causal!r} is not a constant")
    if scale is not None and scalar(scale) is None:
        raise NoMatch(f"scale {ops.name(scale)} is not a constant")
    terms: tuple[Term, ...] = ()
    if isinstance(mask, Node):
        boolean = ops.dtype(mask) == torch.bool
        term = Term("fill_false", mask, fill=-math.inf) if boolean else Term("add", mask)
        terms = (term,)
    elif mask is not None:
        raise NoMatch(f"attn_mask {mask!r} is not a tensor")
    key, value, repeated = read_through_repeat(k, v)
    # enable_gqa with as many KV heads as query heads is G = 1: h // 1 reads the same head.
    kv_heads = repeated or bool(ops.arg(node, 7, "enable_gqa", False))
    notes = ("K/V repeated for grouped-query attention: read unrepeated",) if repeated else ()
    return Match(
        family="sdpa", anchor=node, output=node, q=Operand(q), k=Operand(key),
        v=Operand(value), out_perm=None, scale=None if scale is None else scalar(scale),
        terms=terms, causal=causal, kv_heads=kv_heads, softmax_dtype=ops.dtype(node),
        scores_shape=None, inner=(node,), notes=notes, zero_empty_rows=True,
    )  # fmt: skip


# -- hand-written: softmax(Q @ K^T ...) @ V ---------------------------------------------------


def _softmax_chain(softmax: Node, scalar: Scalar) -> Match:
    _check_softmax_dim(softmax)
    inner = [softmax]
    weights = _follow_weights(softmax, inner)
    av = _single_user(weights, "the attention weights")
    v_perm, value, out_perm = _av_operands(av, weights)
    scores = softmax.args[0]
    qk, links = _walk_scores(scores, scalar, inner)
    q, k, qk_scale = _qk_operands(qk, scalar, inner)
    scale, terms = _fold_links(links, qk_scale)
    scores_shape = ops.shape(scores)
    terms = _place_terms(terms, ops.shape(qk), scores_shape)
    key, value_node, repeated = read_through_repeat(k.node, value)
    if repeated and k.perm is not None:
        raise NoMatch("a repeated K is permuted before Q @ K^T")
    if repeated:
        k = Operand(key)
    _check_private(inner, av)
    notes = ("K/V repeated for grouped-query attention: read unrepeated",) if repeated else ()
    return Match(
        family="softmax", anchor=softmax, output=av, q=q, k=k, v=Operand(value_node, v_perm),
        out_perm=out_perm, scale=scale, terms=terms, causal=False, kv_heads=repeated,
        softmax_dtype=ops.dtype(softmax), scores_shape=scores_shape, inner=(*inner, av),
        notes=notes,
    )  # fmt: skip


def _check_softmax_dim(softmax: Node) -> None:
    dim = ops.arg(softmax, 1, "dim")
    n = ops.rank(softmax)
    if not isinstance(dim, int) or n is None or dim % n != n - 1:
        raise NoMatch(f"softmax over dim {dim!r}, not the last (key) dim")


def _follow_weights(softmax: Node, inner: list[Node]) -> Node:
    """Through casts, eval dropout and contiguous to the node ``A @ V`` reads."""
    node = softmax
    while True:
        user = _single_user(node, f"softmax output '{node.name}'")
        family = ops.kind(user)
        if family == "dropout" and user.args[0] is node:
            if not ops.is_identity_dropout(user):
                raise NoMatch(f"dropout '{user.name}' on the attention weights is active")
        elif not (family in ("cast", "contiguous") and ops.is_cast(user)):
            return node
        inner.append(user)
        node = user


def _single_user(node: Node, what: str) -> Node:
    users = list(node.users)
    if len(users) != 1:
        readers = ", ".join(f"'{u.name}'" for u in users) or "nothing"
        raise NoMatch(f"{what} is read by {readers}, not only by A @ V")
    return users[0]


def _av_operands(av: Node, weights: Node) -> tuple[tuple[int, ...] | None, Node, tuple | None]:
    """(V's permutation, V, the output permutation) of ``A @ V`` or its einsum."""
    family = ops.kind(av)
    if family == "matmul" and av.args[0] is weights and isinstance(av.args[1], Node):
        if ops.rank(av.args[1]) is None or ops.rank(av.args[1]) < 2:
            raise NoMatch(f"'{av.name}' multiplies the weights by a vector, not by V")
        return None, av.args[1], None
    if family == "einsum":
        equation, operands = einsum_parts(av)
        if len(operands) == 2 and operands[0] is weights:
            v_perm, out_perm = einsum_av(equation, av)
            return v_perm, operands[1], out_perm
    raise NoMatch(f"the attention weights feed '{av.name}', not A @ V")


def _walk_scores(node: object, scalar: Scalar, inner: list[Node]) -> tuple[Node, list[tuple]]:
    """From the softmax input back to ``Q @ K^T``: the product and the links, outermost first."""
    links: list[tuple] = []
    while True:
        if not isinstance(node, Node):
            raise NoMatch(f"the scores are {node!r}, not a tensor")
        family = ops.kind(node)
        if family in ("matmul", "einsum"):
            inner.append(node)
            return node, links
        inner.append(node)
        if _passes_scores(node, family):
            node = node.args[0]
        elif family in ("mul", "div"):
            node, factor = _scalar_operand(node, family, scalar)
            links.append(("scale", factor))
        elif family in ("add", "sub"):
            node = _additive(node, family, scalar, links, inner)
        elif family in ("masked_fill", "where"):
            node = _fill(node, family, scalar, links)
        else:
            inner.pop()
            raise NoMatch(f"the scores come from '{node.name}', not from Q @ K^T")


def _scalar_operand(node: Node, family: str, scalar: Scalar) -> tuple[Node, float]:
    a, b = node.args[0], node.args[1] if len(node.args) > 1 else ops.arg(node, 1, "other")
    if family == "div" and ops.arg(node, 2, "rounding_mode") is not None:
        raise NoMatch(f"'{node.name}' divides with rounding")
    for tensor, other in [(a, b), (b, a)] if family == "mul" else [(a, b)]:
        value = scalar(other)
        if isinstance(tensor, Node) and value is not None:
            factor = value if family == "mul" else 1.0 / value
            if not factor > 0:
                raise NoMatch(f"'{node.name}' scales the scores by {factor}, not a positive scale")
            return tensor, factor
    raise NoMatch(f"'{node.name}' multiplies the scores by a tensor, not by a scale")


def _additive(node: Node, family: str, scalar: Scalar, links: list, inner: list[Node]) -> Node:
    """``scores +/- bias`` (either order for +): push the bias link, return the scores side."""
    if ops.arg(node, 2, "alpha", 1) != 1:
        raise NoMatch(f"'{node.name}' adds with alpha")
    a, b = node.args[0], node.args[1]
    sign = -1.0 if family == "sub" else 1.0
    if scalar(b) is not None or scalar(a) is not None:
        # A constant shift of every score cancels in the softmax.
        shifted = a if scalar(b) is not None else b
        if family == "sub" and shifted is b:
            raise NoMatch(f"'{node.name}' negates the scores")
        return shifted
    orders = [(a, b)] if family == "sub" else [(a, b), (b, a)]
    for scores, bias in orders:
        if _reaches_product(scores, scalar):
            links.append(("term", Term("add", bias, factor=sign, at=ops.shape(node))))
            return scores
    raise NoMatch(f"neither operand of '{node.name}' leads to Q @ K^T")


def _reaches_product(node: object, scalar: Scalar) -> bool:
    try:
        _walk_scores(node, scalar, [])
    except NoMatch:
        return False
    return True


def _fill(node: Node, family: str, scalar: Scalar, links: list) -> Node:
    """``masked_fill(scores, mask, v)`` or ``where(mask, scores, v)`` with v a mask value."""
    if family == "masked_fill":
        scores, mask, value = node.args[0], ops.arg(node, 1, "mask"), ops.arg(node, 2, "value")
        where_true = True
    else:
        mask, x, y = (ops.arg(node, i, n) for i, n in enumerate(("condition", "input", "other")))
        where_true = scalar(x) is not None
        scores, value = (y, x) if where_true else (x, y)
    fill = scalar(value)
    if fill is None or not isinstance(mask, Node) or ops.dtype(mask) != torch.bool:
        raise NoMatch(f"'{node.name}' is not a fill of the scores by a boolean mask")
    if fill > MASKED_AT:
        raise NoMatch(f"'{node.name}' fills with {fill}, not a mask value (<= {MASKED_AT})")
    fill_kind = "fill_true" if where_true else "fill_false"
    links.append(("term", Term(fill_kind, mask, fill=fill, at=ops.shape(node))))
    return scores


def _fold_links(links: list[tuple], scale: float) -> tuple[float, tuple[Term, ...]]:
    """Replay the links from the product outward: S = QK * scale + sum(factor * term)."""
    terms: list[Term] = []
    for link in reversed(links):
        if link[0] == "scale":
            scale *= link[1]
            terms = [replace(t, factor=t.factor * link[1]) for t in terms]
        else:
            terms.append(link[1])
    return scale, tuple(terms)


def _passes_scores(node: Node, family: str | None) -> bool:
    """A cast of the scores, or a reshape of their leading dims."""
    return (family == "cast" and ops.is_cast(node)) or (family == "reshape" and _keeps_scores(node))


def _keeps_scores(node: Node) -> bool:
    """A reshape of the scores' leading dims only (the [p, m] matrices stay whole)."""
    before, after = ops.shape(node.args[0]), ops.shape(node)
    return before is not None and after is not None and before[-2:] == after[-2:]


def _place_terms(terms: tuple[Term, ...], product: tuple | None, scores: tuple | None) -> tuple:
    """Terms added in another view of the scores keep that view's static shape."""
    if product != scores:
        raise NoMatch("the scores are reshaped between Q @ K^T and the softmax")
    placed = []
    for term in terms:
        if term.at == scores:
            placed.append(replace(term, at=None))
        elif term.at is None or any(ops.static(d) is None for d in (*term.at, *scores)):
            raise NoMatch(f"'{term.node.name}' is added to a view of the scores of dynamic shape")
        else:
            placed.append(term)
    return tuple(placed)


def _qk_operands(qk: Node, scalar: Scalar, inner: list[Node]) -> tuple[Operand, Operand, float]:
    """Q and K (in ``[..., N, E]``) of the score product, and the scales taken from them."""
    if ops.kind(qk) == "einsum":
        equation, operands = einsum_parts(qk)
        if len(operands) != 2:
            raise NoMatch(f"einsum '{qk.name}' has {len(operands)} operands, not Q and K")
        q_perm, k_perm = einsum_qk(equation, qk)
        if not all(isinstance(x, Node) for x in operands):
            raise NoMatch(f"einsum '{qk.name}' does not multiply two tensors")
        (q, fq), (k, fk) = (_peel_scale(x, scalar, inner) for x in operands)
        return Operand(q, q_perm), Operand(k, k_perm), fq * fk
    a, b = qk.args[0], qk.args[1]
    if not isinstance(a, Node) or not isinstance(b, Node):
        raise NoMatch(f"'{qk.name}' does not multiply two tensors")
    if (ops.rank(a) or 0) < 2 or (ops.rank(b) or 0) < 2:
        raise NoMatch(f"'{qk.name}' multiplies by a vector, not Q @ K^T")
    q, fq = _peel_scale(a, scalar, inner)
    kt, fk = _peel_scale(b, scalar, inner)
    perm = ops.transpose_perm(kt)
    if perm is not None and len(kt.users) == 1:
        # K^T = permute(X, perm), so K = permute(X, perm with its last two entries swapped).
        inner.append(kt)
        k, fk2 = _peel_scale(kt.args[0], scalar, inner)
        k_perm = ops.swap_last_two(perm)
        return Operand(q), Operand(k, None if ops.is_identity(k_perm) else k_perm), fq * fk * fk2
    n = ops.rank(kt)
    return Operand(q), Operand(kt, ops.swap_last_two(tuple(range(n)))), fq * fk


def _peel_scale(node: Node, scalar: Scalar, inner: list[Node]) -> tuple[Node, float]:
    """A scalar factor on Q or K that feeds only the product, taken into the scale."""
    factor = 1.0
    while ops.kind(node) in ("mul", "div") and len(node.users) == 1:
        try:
            source, value = _scalar_operand(node, ops.kind(node), scalar)
        except NoMatch:
            break
        inner.append(node)
        node, factor = source, factor * value
    return node, factor


def _check_private(inner: list[Node], output: Node) -> None:
    """Every node the site removes must be read only inside the site."""
    inside = set(inner) | {output}
    for node in inner:
        outside = [u.name for u in node.users if u not in inside]
        if outside:
            raise NoMatch(f"'{node.name}' is also read by '{outside[0]}'")
