"""Costs of FlexAttention's blocks on a product mask: row-major token tiles of a grid.

A tiling of row-major tokens (``query_size`` and ``key_size`` tokens per tile, the last one
clipped) of a product mask (product.py) is costed from ``F(a, b)``, the allowed pairs
among the first ``a`` query and ``b`` key tokens, at the tile boundaries: a block's pairs
are a difference of four of them. ``F`` comes axis by axis when every factor has one axis
(prefix_counts.py), else from prefix boxes (a prefix of row-major tokens is one box per
axis) and the factors' summed-area tables; coarser tiles read it off finer ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from einscade.passes.analysis.cost import Pairs
from einscade.passes.analysis.factor_arrays import profile_counts
from einscade.passes.analysis.prefix_counts import separable_prefix_counts

if TYPE_CHECKING:
    from einscade.passes.analysis.product import ProductMask

MAX_PAIRS = 1 << 18  # (query tile, key tile) pairs costed at once at most (else: sampled)


def flat_pairs(product: ProductMask, query_size: int, key_size: int) -> Pairs | None:
    """:func:`product_pairs` for row-major token tiles of ``query_size`` tokens with key
    tiles of ``key_size`` tokens (FlexAttention's blocks on a grid): every block's allowed
    pairs from ``F(a, b)``, the allowed pairs among the first ``a`` query and ``b`` key
    tokens, at the tile boundaries. A prefix of row-major tokens is at most one box per axis
    (rows before, then a partial row, recursively), so ``F`` is a sum over pairs of those
    boxes of products of factor counts, each a summed-area lookup."""
    tokens = math.prod(product.extents)
    q_edges, k_edges = _edges(tokens, query_size), _edges(tokens, key_size)
    if (len(q_edges) - 1) * (len(k_edges) - 1) > MAX_PAIRS:
        return None
    counts = product.flat_counts.get((query_size, key_size))
    if counts is None:
        counts = _finer_counts(product, tokens, query_size, key_size)
    if counts is None:
        counts = _prefix_counts(product, q_edges, k_edges)
    if counts is None:
        return None
    product.flat_counts[(query_size, key_size)] = counts
    blocks = counts[1:, 1:] - counts[:-1, 1:] - counts[1:, :-1] + counts[:-1, :-1]
    queries, keys = np.diff(q_edges), np.diff(k_edges)
    # Tiles take two sizes per side (whole, clipped last): kinds by (tail, tail, full) codes.
    q_tail, k_tail = queries != query_size, keys != key_size
    full = blocks == queries[:, None] * keys[None, :]
    codes = (q_tail[:, None] * 4 + k_tail[None, :] * 2 + full)[blocks > 0]
    counts = np.bincount(codes, minlength=8)
    seen = np.flatnonzero(counts)
    sizes_q = np.array([query_size, int(queries[-1])])[seen // 4]
    sizes_k = np.array([key_size, int(keys[-1])])[seen // 2 % 2]
    return len(q_edges) - 1, sizes_q, sizes_k, (seen % 2).astype(bool), counts[seen]


def _edges(tokens: int, size: int) -> np.ndarray:
    """Token tile boundaries: multiples of ``size``, the last one clipped to ``tokens``."""
    return np.minimum(np.arange(0, tokens + size, size), tokens)


def _finer_counts(product: ProductMask, tokens: int, query_size: int, key_size: int):  # type: ignore[no-untyped-def]
    """``F`` at the edges of (query_size, key_size) tiles read off ``F`` of finer tiles
    already counted (sizes dividing these): every edge here is an edge there (a multiple of
    the finer size, or the clipped last one), so the counts are exact; None if none."""
    for (q, k), counts in product.flat_counts.items():
        if query_size % q or key_size % k:
            continue
        rows = _subset(tokens, query_size, q)
        cols = _subset(tokens, key_size, k)
        return counts[np.ix_(rows, cols)]
    return None


def _subset(tokens: int, size: int, finer: int) -> np.ndarray:
    """Indices of the ``size`` edges among the ``finer`` edges (``finer`` divides ``size``)."""
    fine = _edges(tokens, finer)
    return np.searchsorted(fine, _edges(tokens, size))


def _prefix_counts(product: ProductMask, q_edges: np.ndarray, k_edges: np.ndarray):  # type: ignore[no-untyped-def]
    """``F(a, b)`` (:func:`flat_pairs`) for every query edge ``a`` and key edge ``b``: axis by
    axis when every factor has one axis (prefix_counts.py), else from prefix boxes; None
    when a factor has no dense table."""
    tables: list[np.ndarray | None] = []
    for factor, (axes, index) in enumerate(product.factors):
        arrays = None if index is None else product.arrays(factor)
        if index is not None and arrays is None:
            return None
        if len(axes) == 1:
            tables.append(None if arrays is None else arrays.allowed)
    if len(tables) == len(product.extents):
        return separable_prefix_counts(tables, product.extents, q_edges, k_edges)
    return _box_prefix_counts(product, q_edges, k_edges)


def _box_prefix_counts(product: ProductMask, q_edges: np.ndarray, k_edges: np.ndarray):  # type: ignore[no-untyped-def]
    """:func:`_prefix_counts` from the prefix boxes of the edges (factors of several axes)."""
    q_boxes, k_boxes = (
        _prefix_boxes(q_edges, product.extents),
        _prefix_boxes(k_edges, product.extents),
    )
    # On an axis a prefix box is fixed (axes before its own), a prefix or whole (after): a
    # factor's count depends only on those kinds, so box pairs share it. Axes no conjunct
    # reads allow every pair: their count is a product of the two boxes' volumes. A factor's
    # table is summed over each query box once (a profile per query kind), then read per key
    # box with row gathers.
    dense = [f for f, (_, index) in enumerate(product.factors) if index is not None]
    free = [a for axes, index in product.factors if index is None for a in axes]
    shared: dict[tuple, np.ndarray] = {}  # type: ignore[type-arg]
    profiles: dict[tuple, np.ndarray] = {}  # type: ignore[type-arg]
    counts = 0
    k_volumes = [_volume_of(k_lo, k_hi, free)[None, :] for k_lo, k_hi in k_boxes]
    for kq, (q_lo, q_hi) in enumerate(q_boxes):
        q_volume = _volume_of(q_lo, q_hi, free)[:, None]
        for kk, (k_lo, k_hi) in enumerate(k_boxes):
            term = q_volume * k_volumes[kk]
            for factor in dense:
                axes = product.factors[factor][0]
                q_kinds = (factor, *(_kind(a, kq) for a in axes))
                kinds = (*q_kinds, *(_kind(a, kk) for a in axes))
                found = shared.get(kinds)
                if found is None:
                    profile = profiles.get(q_kinds)
                    if profile is None:
                        arrays = product.arrays(factor)
                        lo, hi = [q_lo[a] for a in axes], [q_hi[a] for a in axes]
                        profile = profiles[q_kinds] = arrays.query_profile(lo, hi)  # type: ignore[union-attr]
                    lo, hi = [k_lo[a] for a in axes], [k_hi[a] for a in axes]
                    found = shared[kinds] = profile_counts(profile, lo, hi)
                term = term * found
            counts = counts + term
    return np.broadcast_to(counts, (len(q_edges), len(k_edges)))


def _volume_of(lo: list, hi: list, axes: list[int]) -> np.ndarray:  # type: ignore[type-arg]
    """Per edge, the number of points of a prefix box on ``axes`` (1 without axes)."""
    found = np.ones_like(hi[0])
    for a in axes:
        found = found * np.maximum(hi[a] + 1 - (0 if lo[a] is None else lo[a]), 0)
    return found


def _kind(axis: int, box: int) -> int:
    """How prefix box ``box`` spans ``axis``: fixed (-1), a prefix (0) or whole (1)."""
    return (axis > box) - (axis < box)


def _prefix_boxes(edges: np.ndarray, extents: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """Per edge ``a``, the tokens ``[0, a)`` as one box per axis ``k`` (lo, hi lists per
    axis, arrays over the edges; a lower bound None is 0): axes before ``k`` fixed at
    ``a``'s coordinates, axis ``k`` in ``[0, c_k - 1]`` (empty when ``c_k`` is 0), later
    axes whole."""
    strides = [math.prod(extents[k + 1 :]) for k in range(len(extents))]
    coords = [edges // strides[0]] + [
        (edges // s) % n for s, n in zip(strides[1:], extents[1:], strict=True)
    ]
    zero = np.zeros_like(edges)
    fixed = [np.minimum(c, n - 1) for c, n in zip(coords, extents, strict=True)]  # a = N: empty
    boxes = []
    for k in range(len(extents)):
        lo = [fixed[j] if j < k else None for j in range(len(extents))]
        hi = [fixed[j] if j < k else (coords[k] - 1 if j == k else zero + extents[j] - 1)
              for j in range(len(extents))]  # fmt: skip
        boxes.append((lo, hi))
    return boxes
