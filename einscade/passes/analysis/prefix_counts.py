"""Allowed pairs among row-major token prefixes of a mask that is a product over single axes.

When ``allowed(p, m) = T_0[p_0, m_0] * ... * T_{d-1}[p_{d-1}, m_{d-1}]`` (a table per grid
axis; an axis no conjunct reads has a table of ones), ``F(a, b)``, the allowed pairs among the
first ``a`` query and the first ``b`` key tokens in row-major order, follows the axes one at
a time. With ``N_k`` the tokens of the sub-grid of axes ``k..``, write ``a = a0 * N_{k+1} + a1``
(``a0`` whole slabs of axis ``k``, then a prefix ``a1`` of slab ``a0``), ``b`` likewise, and
``S_k(i, j)`` the pairs of ``T_k`` among its first ``i`` rows and ``j`` columns. Then

    F_k(a, b) = S_k(a0, b0) * W_{k+1}                  whole slabs against whole slabs
              + sum_{x < a0} T_k[x, b0] * F_{k+1}(N_{k+1}, b1)
              + sum_{y < b0} T_k[a0, y] * F_{k+1}(a1, N_{k+1})
              + T_k[a0, b0] * F_{k+1}(a1, b1)

with ``W_{k+1}`` every pair of the sub-grid, and ``F_d(a, b) = a * b`` past the last axis.
Each sum is a difference of ``S_k`` lookups (clipped at the axis end, where they vanish), so
all edges cost a few gathers per axis: no box pairs, no corner sums over several dims.
"""

from __future__ import annotations

import math

import numpy as np

# Per axis (inside the recursion): the summed-area table of its ``T`` ((n + 1) x (n + 1), zeros in
# front), or the axis's extent ``n`` when ``T`` is all ones (``S(i, j) = i * j``).
AxisTable = np.ndarray | int


def summed_area(table: np.ndarray) -> np.ndarray:
    """``S(i, j)``: allowed pairs of a 2-D table among its first ``i`` rows and ``j`` columns."""
    rows, cols = table.shape
    summed = np.zeros((rows + 1, cols + 1), np.int64)
    summed[1:, 1:] = table.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    return summed


MERGED_LIMIT = 1 << 12  # entries of a table merged from consecutive axes, at most


def separable_prefix_counts(
    tables: list[np.ndarray | None],
    extents: tuple[int, ...],
    q_edges: np.ndarray,
    k_edges: np.ndarray,
) -> np.ndarray:
    """``F(a, b)`` (module doc) for every query edge ``a`` and key edge ``b`` (token counts
    from 0 to the grid's tokens): ``[len(q_edges), len(k_edges)]``. ``tables``: per axis
    its boolean table ``[query, key]``, or None for all ones.

    Consecutive axes are merged first (row-major tokens of two axes are those of one axis
    of their product, whose table is the Kronecker product, all ones when both are): fewer
    steps of the recursion."""
    merged, sizes = _merge(tables, extents)
    axes = [n if t is None else summed_area(t) for t, n in zip(merged, sizes, strict=True)]
    return _Counts(axes, tuple(sizes)).both(0, q_edges, k_edges)


def _merge(tables: list[np.ndarray | None], extents: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """Runs of axes merged while both are all ones, or the product table stays small."""
    merged: list[np.ndarray | None] = [tables[0]]
    sizes = [extents[0]]
    for table, n in zip(tables[1:], extents[1:], strict=True):
        last, size = merged[-1], sizes[-1]
        if last is None and table is None:
            sizes[-1] = size * n
            continue
        if (size * n) ** 2 <= MERGED_LIMIT:
            ones = np.ones((size, size), bool) if last is None else last
            merged[-1] = np.kron(ones, np.ones((n, n), bool) if table is None else table)
            sizes[-1] = size * n
            continue
        merged.append(table)
        sizes.append(n)
    return merged, sizes


class _Counts:
    """The recursion of the module doc over one grid (scratch for one call). Query prefixes
    ``a`` and key prefixes ``b`` are 1-D arrays; a table is read at every (row, column)
    of them with two 1-D takes (a 2-D fancy index costs several times more)."""

    def __init__(self, axes: list[AxisTable], extents: tuple[int, ...]):
        self.axes, self.extents = axes, extents
        self.tokens = [math.prod(extents[k:]) for k in range(len(extents) + 1)]
        totals = [_total(t, n) for t, n in zip(axes, extents, strict=True)]
        self.whole = [math.prod(totals[k:]) for k in range(len(extents) + 1)]

    def both(self, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``F_k(a, b)`` for every query prefix of ``a`` and key prefix of ``b``."""
        if k == len(self.extents):
            return np.multiply.outer(a, b)
        a0, a1 = np.divmod(a, self.tokens[k + 1])
        b0, b1 = np.divmod(b, self.tokens[k + 1])
        n = self.extents[k]
        a_next, b_next = np.minimum(a0 + 1, n), np.minimum(b0 + 1, n)
        s00, s01 = self._outer(k, a0, b0), self._outer(k, a0, b_next)
        s10, s11 = self._outer(k, a_next, b0), self._outer(k, a_next, b_next)
        column = s01 - s00  # rows before a0, key column b0
        row = s10 - s00  # query row a0, columns before b0
        corner = s11 - s10 - column  # T_k[a0, b0]
        found = s00 * self.whole[k + 1]
        found += column * self.keys(k + 1, b1)[None, :]
        found += row * self.queries(k + 1, a1)[:, None]
        found += corner * self.both(k + 1, a1, b1)
        return found

    def keys(self, k: int, b: np.ndarray) -> np.ndarray:
        """``F_k(N_k, b)``: every query of the sub-grid against a key prefix."""
        return self._margin(k, b, rows=False)

    def queries(self, k: int, a: np.ndarray) -> np.ndarray:
        """``F_k(a, N_k)``: a query prefix against every key of the sub-grid."""
        return self._margin(k, a, rows=True)

    def _margin(self, k: int, prefix: np.ndarray, rows: bool) -> np.ndarray:
        """A prefix along one side (query rows or key columns) against the whole other."""
        if k == len(self.extents):
            return prefix
        p0, p1 = np.divmod(prefix, self.tokens[k + 1])
        n = self.extents[k]
        s0 = self._line(k, p0, rows=rows)
        edge = self._line(k, np.minimum(p0 + 1, n), rows=rows) - s0
        return s0 * self.whole[k + 1] + edge * self._margin(k + 1, p1, rows)

    def _outer(self, k: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``S_k(i, j)`` at every (i, j) pair: ``[len(i), len(j)]``."""
        table = self.axes[k]
        if isinstance(table, np.ndarray):
            return table.take(i, axis=0).take(j, axis=1)
        return np.multiply.outer(i, j)  # all ones: every pair of the first i rows, j columns

    def _line(self, k: int, index: np.ndarray, rows: bool) -> np.ndarray:
        """``S_k(i, n)`` (``rows``) or ``S_k(n, j)``: against the whole other side."""
        table, n = self.axes[k], self.extents[k]
        if isinstance(table, np.ndarray):
            return table[index, n] if rows else table[n, index]
        return index * n


def _total(table: AxisTable, extent: int) -> int:
    return int(table[-1, -1]) if isinstance(table, np.ndarray) else extent * extent
