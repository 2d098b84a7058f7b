"""Oracle attention masks, written straight from the formulas, one query at a time.

Conventions (all functions):

- A mask is a ``torch.bool`` tensor ``[num_queries, num_keys]``; ``mask[q, k]`` is True iff
  query ``q`` attends key ``k``.
- Multi-dimensional grids are flattened row-major (last axis fastest), exactly like
  ``torch.Tensor.reshape`` / ``flatten`` of a ``[X, Y, Z]`` token grid.
- Per-axis parameters may be given as one int (same on every axis) or a tuple with one entry
  per axis.

Speed is irrelevant here; clarity is the point. Use small sizes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

__all__ = [
    "causal_mask",
    "document_mask",
    "halo_mask",
    "maxvit_mask",
    "natten_axis_window",
    "natten_mask",
    "prefix_lm_mask",
    "sinks_or",
    "sliding_window_mask",
]


def _per_axis(value, ndim: int, name: str) -> tuple:
    """Broadcast an int/bool (or a tuple per axis) to a tuple of length ``ndim``."""
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise ValueError(f"{name} has {len(value)} entries, grid has {ndim} axes")
        return tuple(value)
    return (value,) * ndim


def _as_grid(grid) -> tuple[int, ...]:
    if isinstance(grid, int):
        return (grid,)
    grid = tuple(int(g) for g in grid)
    if not grid or any(g <= 0 for g in grid):
        raise ValueError(f"grid must be a non-empty tuple of positive ints, got {grid}")
    return grid


def _coords(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """All coordinates of ``grid`` in row-major (flattened) order."""
    return list(itertools.product(*(range(n) for n in grid)))


def _mask_from_axis_predicate(grid: tuple[int, ...], attends_on_axis) -> torch.Tensor:
    """Build ``mask[q, k]`` = AND over axes of ``attends_on_axis(axis, x_q, x_k)``.

    Loops per query; for each query the attended key coordinates on each axis are collected
    and the mask row is the Cartesian product of those per-axis sets.
    """
    coords = _coords(grid)
    n = len(coords)
    mask = torch.zeros(n, n, dtype=torch.bool)
    strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
    for q, xq in enumerate(coords):
        per_axis_keys = [
            [xk for xk in range(grid[a]) if attends_on_axis(a, xq[a], xk)] for a in range(len(grid))
        ]
        for xk in itertools.product(*per_axis_keys):
            k = sum(c * s for c, s in zip(xk, strides, strict=True))
            mask[q, k] = True
    return mask


# --------------------------------------------------------------------------------------
# NATTEN (neighborhood / strided / blocked / dilated / causal) windows
# --------------------------------------------------------------------------------------


def natten_axis_window(
    x: int, L: int, k: int, s: int = 1, d: int = 1, causal: bool = False
) -> list[int]:
    """Sorted key coordinates on one axis attended by query coordinate ``x`` (NATTEN 0.21.7).

    Args:
        x: query coordinate, ``0 <= x < L``.
        L: axis length.
        k: kernel (window) size.
        s: stride (1 = neighborhood attention, ``s == k`` = blocked attention).
        d: dilation.
        causal: causal window on this axis.

    Formulas (neighborhood.md):
        g = x mod d, i = x div d, L_g = L div d + (1 if g < L mod d else 0)
        non-causal: w_left = k div 2, w_right = k - 1 - w_left,
            leader = min((i div s) * s + s div 2, L_g - 1),
            start = max(leader - w_left, 0); if leader + w_right >= L_g:
            start += L_g - w_right - leader - 1; end = start + k
        causal: leader = min((i div s) * s + s - 1, L_g - 1),
            start = max(leader - k + 1, 0), end = min(i + 1, L_g)
        key x' attended iff x' mod d == g and start <= x' div d < end.
    """
    if not (0 <= x < L):
        raise ValueError(f"query coordinate {x} outside [0, {L})")
    if k < 1 or s < 1 or d < 1:
        raise ValueError(f"kernel, stride, dilation must be >= 1, got k={k}, s={s}, d={d}")
    g = x % d
    i = x // d
    L_g = L // d + (1 if g < L % d else 0)
    if causal:
        leader = min((i // s) * s + s - 1, L_g - 1)
        start = max(leader - k + 1, 0)
        end = min(i + 1, L_g)
    else:
        w_left = k // 2
        w_right = k - 1 - w_left
        leader = min((i // s) * s + s // 2, L_g - 1)
        start = max(leader - w_left, 0)
        if leader + w_right >= L_g:
            start += L_g - w_right - leader - 1
        end = start + k
    return [xk for xk in range(L) if xk % d == g and start <= xk // d < end]


def natten_mask(
    grid,
    kernel,
    stride=1,
    dilation=1,
    causal=False,
) -> torch.Tensor:
    """NATTEN mask on a 1-D/2-D/3-D token grid, ``[N, N]`` bool with ``N = prod(grid)``.

    A key is attended iff it is attended on every axis (see :func:`natten_axis_window`).
    ``kernel``, ``stride``, ``dilation`` and ``causal`` are an int/bool or a tuple per axis.
    """
    grid = _as_grid(grid)
    ndim = len(grid)
    ks = _per_axis(kernel, ndim, "kernel")
    ss = _per_axis(stride, ndim, "stride")
    ds = _per_axis(dilation, ndim, "dilation")
    cs = _per_axis(causal, ndim, "causal")
    coords = _coords(grid)
    n = len(coords)
    strides = [math.prod(grid[a + 1 :]) for a in range(ndim)]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q, xq in enumerate(coords):
        per_axis_keys = [
            natten_axis_window(xq[a], grid[a], ks[a], ss[a], ds[a], bool(cs[a]))
            for a in range(ndim)
        ]
        for xk in itertools.product(*per_axis_keys):
            mask[q, sum(c * st for c, st in zip(xk, strides, strict=True))] = True
    return mask


# --------------------------------------------------------------------------------------
# HaloNet, MaxViT
# --------------------------------------------------------------------------------------


def halo_mask(grid, block, halo) -> torch.Tensor:
    """HaloNet blocked local attention, ``[N, N]`` bool.

    Per axis: the query at ``x`` is in block ``bx = x // block``; it attends the keys with
    ``bx*block - halo <= x' < bx*block + block + halo`` (clipped to the grid, i.e. no padding
    keys). ``block`` and ``halo`` are an int or a tuple per axis.
    """
    grid = _as_grid(grid)
    bs = _per_axis(block, len(grid), "block")
    hs = _per_axis(halo, len(grid), "halo")

    def attends(a: int, xq: int, xk: int) -> bool:
        lo = (xq // bs[a]) * bs[a] - hs[a]
        hi = (xq // bs[a]) * bs[a] + bs[a] + hs[a]
        return lo <= xk < hi

    return _mask_from_axis_predicate(grid, attends)


def maxvit_mask(grid, size, mode: str) -> torch.Tensor:
    """MaxViT block or grid attention, ``[N, N]`` bool.

    - ``mode="block"``: non-overlapping ``size x size`` windows: attend iff
      ``x // size == x' // size`` on every axis.
    - ``mode="grid"``: a ``size x size`` sparse grid spread over the whole image: attend iff
      ``x % (L // size) == x' % (L // size)`` on every axis (each group has ``size`` tokens
      per axis, ``L // size`` apart).

    Every axis length must be divisible by its ``size``.
    """
    grid = _as_grid(grid)
    sz = _per_axis(size, len(grid), "size")
    for L, p in zip(grid, sz, strict=True):
        if p < 1 or L % p != 0:
            raise ValueError(f"axis length {L} not divisible by size {p}")
    if mode == "block":

        def attends(a: int, xq: int, xk: int) -> bool:
            return xq // sz[a] == xk // sz[a]

    elif mode == "grid":

        def attends(a: int, xq: int, xk: int) -> bool:
            step = grid[a] // sz[a]
            return xq % step == xk % step

    else:
        raise ValueError(f"mode must be 'block' or 'grid', got {mode!r}")
    return _mask_from_axis_predicate(grid, attends)


# --------------------------------------------------------------------------------------
# 1-D sequence masks
# --------------------------------------------------------------------------------------


def _align_offset(P: int, M: int, align: str) -> int:
    """Offset added to a query index to get its aligned position in key coordinates.

    ``top_left``: query i sits at key position i. ``bottom_right``: the last query sits at the
    last key (query i sits at key position ``i + M - P``), as in FlashAttention >= 2.1 with
    ``seqlen_q != seqlen_k`` / KV-cache decoding.
    """
    if align == "top_left":
        return 0
    if align == "bottom_right":
        return M - P
    raise ValueError(f"align must be 'top_left' or 'bottom_right', got {align!r}")


def causal_mask(P: int, M: int, align: str = "top_left") -> torch.Tensor:
    """Causal mask ``[P, M]``: query i attends key j iff ``j <= i + offset`` (see align).

    With ``bottom_right`` and ``P > M`` the first ``P - M`` query rows are fully masked.
    """
    off = _align_offset(P, M, align)
    mask = torch.zeros(P, M, dtype=torch.bool)
    for i in range(P):
        for j in range(M):
            mask[i, j] = j <= i + off
    return mask


def sliding_window_mask(
    P: int,
    M: int,
    left: int | None,
    right: int | None,
    causal: bool = False,
    align: str = "top_left",
) -> torch.Tensor:
    """Sliding window ``[P, M]``: with ``c = i + offset`` (see align), query i attends key j iff
    ``c - left <= j <= c + right`` (window of ``left + 1 + right`` keys, FlashAttention
    ``window_size=(left, right)`` convention).

    ``left``/``right`` of ``None`` or a negative value mean unbounded on that side.
    ``causal=True`` additionally requires ``j <= c`` (equivalent to ``right = 0``).
    """
    off = _align_offset(P, M, align)
    mask = torch.zeros(P, M, dtype=torch.bool)
    for i in range(P):
        c = i + off
        for j in range(M):
            ok = True
            if left is not None and left >= 0 and j < c - left:
                ok = False
            if right is not None and right >= 0 and j > c + right:
                ok = False
            if causal and j > c:
                ok = False
            mask[i, j] = ok
    return mask


def sinks_or(mask: torch.Tensor, S: int) -> torch.Tensor:
    """Attention sinks: a copy of ``mask`` (``[..., P, M]``) where the first ``S`` keys are
    visible to every query."""
    out = mask.clone().to(torch.bool)
    for j in range(min(S, out.shape[-1])):
        out[..., j] = True
    return out


def document_mask(
    doc_q: Sequence[int] | torch.Tensor, doc_k: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Document (packed sequences) mask ``[P, M]``: attend iff ``doc_q[i] == doc_k[j]``.

    Combine with :func:`causal_mask` (``&``) for causal packed documents.
    """
    dq = [int(v) for v in doc_q]
    dk = [int(v) for v in doc_k]
    mask = torch.zeros(len(dq), len(dk), dtype=torch.bool)
    for i, a in enumerate(dq):
        for j, b in enumerate(dk):
            mask[i, j] = a == b
    return mask


def prefix_lm_mask(N: int, prefix_len: int) -> torch.Tensor:
    """Prefix-LM mask ``[N, N]``: every query sees all keys ``j < prefix_len``
    (bidirectional prefix) and is causal otherwise (``j <= i``)."""
    mask = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N):
        for j in range(N):
            mask[i, j] = j < prefix_len or j <= i
    return mask
