"""Bit answers of one-axis factors (factor_bits.py) against one tiling at a time with
arrays (``FactorArrays``): the same kinds in the same order, the same key boxes, the same
unions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.passes.analysis.factor_arrays import FactorArrays
from einscade.passes.analysis.factor_bits import bits_box, bits_grid


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


def _grid_requests(table, data) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(query tile, key tile) sizes along the factor's axis, up to past its end."""
    sizes = st.integers(1, table.shape[0] + 2)
    return data.draw(st.lists(st.tuples(sizes, sizes), min_size=1, max_size=6))


def _box_requests(table, data) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(query tile size, key box padding) requests."""
    sizes = st.integers(1, table.shape[0] + 2)
    return data.draw(st.lists(st.tuples(sizes, st.sampled_from([1, 2, 4])), max_size=6))


@given(tables(), st.data())
@settings(deadline=None, max_examples=80)
def test_bit_grid_kinds_equal_one_tiling_at_a_time(table, data) -> None:  # type: ignore[no-untyped-def]
    requests = _grid_requests(table, data)
    bits, single = FactorArrays(table), FactorArrays(table)
    bits_grid(bits, bits.bits, requests)
    for q, k in requests:
        expected = single.tiled_grid((q,), (k,))
        rows = bits.rows[((q,), (k,))]
        assert rows == list(zip(*(a.tolist() for a in expected), strict=True))
        assert _equal(bits.tiled_grid((q,), (k,)), expected)  # the arrays made from the rows


@given(tables(), st.data())
@settings(deadline=None, max_examples=80)
def test_bit_key_boxes_equal_one_tiling_at_a_time(table, data) -> None:  # type: ignore[no-untyped-def]
    requests = _box_requests(table, data)
    bits, single = FactorArrays(table), FactorArrays(table)
    bits_box(bits, bits.bits, requests)
    for q, pad in requests:
        expected = single.tiled_box((q,), pad)
        rows = bits.rows[((q,), pad)]
        assert (rows is None) == (expected is None)
        if expected is not None:
            assert rows == list(zip(*(a.tolist() for a in expected), strict=True))
        assert _equal(bits.tiled_box((q,), pad), expected)
        found, boxes = bits.tile_boxes((q,), pad), single.tile_boxes((q,), pad)
        assert (found is None) == (boxes is None)
        if found is not None:
            some = boxes[0]
            assert np.array_equal(found[0], some)
            for a, b in zip(found[1:], boxes[1:], strict=True):
                assert a.dtype == b.dtype and np.array_equal(a[..., some], b[..., some])


def test_bit_paths_on_a_dilated_window() -> None:
    """A dilated window (every other key of a band) and tilings with clipped tails."""
    n = 37
    rows, cols = np.indices((n, n))
    table = (abs(rows - cols) <= 6) & ((rows - cols) % 2 == 0)
    bits, single = FactorArrays(table), FactorArrays(table)
    requests = [(1, 1), (1, 2), (2, 1), (3, 5), (8, 8), (16, 4), (37, 37), (40, 3)]
    bits_grid(bits, bits.bits, requests)
    for q, k in requests:
        assert _equal(bits.tiled_grid((q,), (k,)), single.tiled_grid((q,), (k,)))
    boxes = [(1, 1), (4, 1), (5, 1), (5, 4), (40, 2)]
    bits_box(bits, bits.bits, boxes)
    assert bits.rows[((1,), 1)] is None  # one query's keys: every other key, a union
    assert bits.rows[((4,), 1)] is None  # the clipped tail is one query
    assert bits.rows[((5,), 1)] is not None  # queries of both parities: a band
    for q, pad in boxes:
        assert _equal(bits.tiled_box((q,), pad), single.tiled_box((q,), pad))
