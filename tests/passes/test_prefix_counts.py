"""Prefix counts of a product over single axes (prefix_counts.py) against brute force: the
allowed pairs among the first ``a`` query and ``b`` key tokens of the dense mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.passes.analysis import prefix_counts
from einscade.passes.analysis.prefix_counts import separable_prefix_counts, summed_area


@st.composite
def grids(draw):  # type: ignore[no-untyped-def]
    """Extents (1 to 3 axes), a random boolean table per axis or None (all ones)."""
    extents = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    tables = []
    for n in extents:
        bits = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
        tables.append(draw(st.sampled_from([None, np.array(bits, bool).reshape(n, n)])))
    return extents, tables


def _dense(extents, tables) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[P, M]: the product of the axis tables over row-major tokens."""
    allowed = np.ones((1, 1), bool)
    for n, table in zip(extents, tables, strict=True):
        table = np.ones((n, n), bool) if table is None else table
        allowed = np.kron(allowed, table)
    return allowed


@given(grids(), st.data())
@settings(deadline=None, max_examples=100)
def test_prefix_counts_equal_brute_force(grid, data) -> None:  # type: ignore[no-untyped-def]
    extents, tables = grid
    tokens = math.prod(extents)
    edges = st.lists(st.integers(0, tokens), min_size=1, max_size=6)
    q_edges, k_edges = np.array(data.draw(edges)), np.array(data.draw(edges))
    found = separable_prefix_counts(tables, extents, q_edges, k_edges)
    dense = _dense(extents, tables)
    expected = [[int(dense[:a, :b].sum()) for b in k_edges] for a in q_edges]
    assert found.tolist() == expected


@given(grids(), st.data())
@settings(deadline=None, max_examples=50)
def test_prefix_counts_without_merged_axes_agree(grid, data) -> None:  # type: ignore[no-untyped-def]
    """Merging consecutive axes changes the steps, never the counts."""
    extents, tables = grid
    tokens = math.prod(extents)
    edges = np.array(data.draw(st.lists(st.integers(0, tokens), min_size=1, max_size=6)))
    merged = separable_prefix_counts(tables, extents, edges, edges)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefix_counts, "MERGED_LIMIT", 0)
        apart = separable_prefix_counts(tables, extents, edges, edges)
    assert merged.tolist() == apart.tolist()


def test_summed_area_counts_the_leading_block() -> None:
    table = np.array([[1, 0, 1], [1, 1, 0]], bool)
    summed = summed_area(table)
    assert summed.shape == (3, 4)
    assert [[int(table[:i, :j].sum()) for j in range(4)] for i in range(3)] == summed.tolist()
