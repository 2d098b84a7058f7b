"""Lift a matched site into a cascade of the attention library.

The scores of a site are ``QK * scale + sum(terms)`` (:class:`~.patterns.Match`). Terms
whose value is known at compile time (:mod:`.constants`) are added up and handed to
:func:`einscade.frontends.mask_structure.recognise_mask`, which names the mask (causal,
sliding window, documents, and on a square token grid NATTEN / HaloNet / MaxViT windows)
only after rebuilding it from its formulas and comparing element by element. A recognised
mask becomes the cascade's predicate, so the sparsity layout applies; every other term stays
an additive ``bias[b, h, p, m]`` input computed by the graph at run time.

A mask is kept as a bias when a query row would see no key: there eager attention gives a
uniform row (additive -inf would give NaN) while a masked cascade gives 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.fx import Node

from einscade.frontends import softmax_attention
from einscade.frontends.fx import ops
from einscade.frontends.fx.constants import Constants
from einscade.frontends.fx.patterns import Match, Operand, Term
from einscade.frontends.mask_structure import MaskStructure, recognise_mask
from einscade.ir.cascade import Cascade

_GRID_FAMILIES = frozenset({"blocked", "maxvit_grid", "halo", "neighborhood"})


@dataclass(frozen=True)
class Lifted:
    """A site with its cascade and what the replacement call must pass it."""

    match: Match
    cascade: Cascade
    summary: str  # "softmax_attention(causal, kv_heads, scale=0.25)"
    bias_terms: tuple[Term, ...]  # added up at run time into the cascade's bias input
    structure: MaskStructure | None
    lookups: tuple[tuple[str, torch.Tensor], ...]
    guards: tuple[tuple[Node, torch.Tensor], ...]  # buffers the structure was read from
    compute_dtype: torch.dtype | None
    out_dtype: torch.dtype
    notes: tuple[str, ...]


def lift(match: Match, constants: Constants) -> Lifted:
    """The cascade of ``match``; constant masks are recognised where they can be."""
    notes = list(match.notes)
    structure, constant = _constant_structure(match, constants, notes)
    bias_terms = tuple(t for i, t in enumerate(match.terms) if i not in constant)
    constant_terms = tuple(match.terms[i] for i in constant)
    scale = cascade_scale(match.scale, _static_dim(match.q, -1))
    cascade = _build(match, structure, bool(bias_terms), scale)
    guards = tuple(
        (buffer, constants.example(buffer))
        for term in constant_terms
        for buffer in constants.buffers(term.node)
    )
    lookups = tuple(structure.lookup_tensors().items()) if structure is not None else ()
    return Lifted(
        match=match, cascade=cascade, summary=_summary(cascade, match, structure, bias_terms),
        bias_terms=bias_terms, structure=structure, lookups=lookups,
        guards=tuple(dict(guards).items()), compute_dtype=_compute_dtype(match),
        out_dtype=ops.dtype(match.output) or torch.float32, notes=tuple(notes),
    )  # fmt: skip


def _constant_structure(
    match: Match, constants: Constants, notes: list[str]
) -> tuple[MaskStructure | None, tuple[int, ...]]:
    """(the recognised structure, the indices of the terms it replaces), or (None, ())."""
    values = [constants.value(t.node) for t in match.terms]
    constant = tuple(i for i, value in enumerate(values) if value is not None)
    rows, cols = _static_dim(match.q, -2), _static_dim(match.v, -2)
    if not constant or rows is None or cols is None or match.causal:
        return None, ()
    terms = match.terms
    combined = sum(_additive(terms[i], values[i], match.scores_shape) for i in constant)
    try:
        combined = torch.broadcast_to(combined, (*combined.shape[:-2], rows, cols))
        structure = _recognise(combined)
    except (RuntimeError, ValueError) as error:
        notes.append(f"constant mask not analysed: {error}")
        return None, ()
    if structure is None:
        notes.append("constant mask has no structure we know: kept as a bias")
        return None, ()
    if not bool((combined == 0).any(-1).all()):
        notes.append("constant mask hides every key of a row: kept as a bias")
        return None, ()
    grid_family = structure.family in _GRID_FAMILIES
    if grid_family and (match.kv_heads or len(constant) < len(terms)):
        notes.append(f"{structure.family} mask with GQA or another bias: kept as a bias")
        return None, ()
    notes.append(f"constant mask recognised as {structure.family}")
    return structure, constant


def _additive(term: Term, value: torch.Tensor, scores: tuple | None) -> torch.Tensor:
    """A term as the float tensor it adds to the scores (in the softmax's view of them)."""
    if term.kind == "add":
        added = value.to(torch.float32) * term.factor
    else:
        fill = torch.tensor(term.fill * term.factor, dtype=torch.float32)
        zero = torch.zeros((), dtype=torch.float32)
        added = torch.where(value, *((fill, zero) if term.kind == "fill_true" else (zero, fill)))
    return added if term.at is None else added.expand(term.at).reshape(scores)


def _recognise(combined: torch.Tensor) -> MaskStructure | None:
    """Sequence families first; with as many keys as queries, also 1-D, square and cubic
    token grids."""
    structure = recognise_mask(combined)
    rows, cols = combined.shape[-2:]
    if structure is not None or rows != cols:
        return structure
    for grid in _grids(rows):
        structure = recognise_mask(combined, grid=grid)
        if structure is not None:
            return structure
    return None


def _grids(tokens: int) -> list[tuple[int, ...]]:
    grids: list[tuple[int, ...]] = [(tokens,)]
    for axes in (2, 3):
        side = round(tokens ** (1 / axes))
        if side > 1 and side**axes == tokens:
            grids.append((side,) * axes)
    return grids


def _build(
    match: Match, structure: MaskStructure | None, bias: bool, scale: float | None
) -> Cascade:
    if structure is None:
        return softmax_attention(
            causal=match.causal, kv_heads=match.kv_heads, bias=bias, scale=scale
        )
    if structure.family in _GRID_FAMILIES:
        return structure.build(scale=scale)
    return structure.build(kv_heads=match.kv_heads, bias=bias, scale=scale)


def cascade_scale(scale: float | None, head_dim: int | None) -> float | None:
    """None (the cascade's default ``1 / sqrt(E)``) when the scale is that value."""
    if scale is None or (head_dim and math.isclose(scale, head_dim**-0.5, rel_tol=1e-12)):
        return None
    return scale


def _static_dim(operand: Operand, axis: int) -> int | None:
    """A dim of the operand as the site reads it (after its permutation), if static."""
    dims = ops.shape(operand.node)
    if dims is None:
        return None
    if operand.perm is not None:
        dims = tuple(dims[i] for i in operand.perm)
    return ops.static(dims[axis])


def _compute_dtype(match: Match) -> torch.dtype | None:
    """The softmax's dtype where it is wider than Q's (a float32 softmax in a half model)."""
    q, soft = ops.dtype(match.q.node), match.softmax_dtype
    if q is None or soft is None or not soft.is_floating_point or not q.is_floating_point:
        return None
    return soft if torch.finfo(soft).bits > torch.finfo(q).bits else None


def _structure_text(structure: MaskStructure) -> str:
    """``causal``, ``causal_window(left=3)``, ``neighborhood(grid=(8, 8), kernel=(3, 3), ...)``:
    top-left alignment (the default) and document ids are left out."""
    params = [
        f"{k}={v}"
        for k, v in structure.params
        if k != "doc_ids" and not (k == "causal" and v in ("top_left", False))
    ]
    return f"{structure.family}({', '.join(params)})" if params else structure.family


def _summary(
    cascade: Cascade, match: Match, structure: MaskStructure | None, bias_terms: tuple
) -> str:
    options = []
    if match.causal:
        options.append("causal")
    if structure is not None and structure.family != "full":
        options.append(_structure_text(structure))
    if match.kv_heads:
        options.append("kv_heads")
    if bias_terms:
        options.append("bias")
    if match.scale is not None:
        options.append(f"scale={match.scale:.6g}")
    return f"{cascade.name}({', '.join(options)})"
