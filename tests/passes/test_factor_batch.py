"""Batched answers of one-axis factors (factor_batch.py) against one tiling at a time
(``FactorArrays``): the same kinds in the same order, the same key boxes, the same unions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.passes.analysis.factor_arrays import FactorArrays
from einscade.passes.analysis.factor_batch import batch_box, batch_grid


@st.composite
def tables(draw):  # type: ignore[no-untyped-def]
    """A one-axis table: a window per row (one box of keys, or none) or random bits."""
    n = draw(st.integers(1, 12))
    if draw(st.booleans()):
        bits = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
        return np.array(bits, bool).reshape(n, n)
    table = np.zeros((n, n), bool)
    for row in range(n):
        lo = draw(st.integers(0, n - 1))
        table[row, lo : lo + draw(st.integers(0, n))] = True
    return table


def _equal(a, b) -> bool:  # type: ignore[no-untyped-def]
    if a is None or b is None:
        return a is None and b is None
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@given(tables(), st.data())
@settings(deadline=None, max_examples=80)
def test_batched_grid_kinds_equal_one_tiling_at_a_time(table, data) -> None:  # type: ignore[no-untyped-def]
    n = table.shape[0]
    sizes = st.integers(1, n + 2)
    requests = data.draw(st.lists(st.tuples(sizes, sizes), min_size=1, max_size=6))
    batched, single = FactorArrays(table), FactorArrays(table)
    batch_grid(batched, requests)
    for q, k in requests:
        assert ((q,), (k,)) in batched.kinds
        expected = single.tiled_grid((q,), (k,))
        assert _equal(batched.tiled_grid((q,), (k,)), expected)


@given(tables(), st.data())
@settings(deadline=None, max_examples=80)
def test_batched_key_boxes_equal_one_tiling_at_a_time(table, data) -> None:  # type: ignore[no-untyped-def]
    n = table.shape[0]
    requests = data.draw(
        st.lists(st.tuples(st.integers(1, n + 2), st.sampled_from([1, 2, 4])), max_size=6)
    )
    batched, single = FactorArrays(table), FactorArrays(table)
    batch_box(batched, requests)
    for q, pad in requests:
        assert ((q,), pad) in batched.kinds
        assert _equal(batched.tiled_box((q,), pad), single.tiled_box((q,), pad))
        found, expected = batched.tile_boxes((q,), pad), single.tile_boxes((q,), pad)
        assert (found is None) == (expected is None)
        if found is not None:
            some = expected[0]
            assert np.array_equal(found[0], some)
            for a, b in zip(found[1:], expected[1:], strict=True):
                assert np.array_equal(a[..., some], b[..., some])  # tiles with keys
