"""Product masks: the array answers that cost candidate tilings agree with the rows built for
the chosen one, on random product masks (NATTEN, HaloNet, MaxViT, folded or not).

The rows themselves are checked for soundness against brute force in test_blocks.py and
test_layout.py; here the factor arrays (summed-area tables) must give exactly the visited
tiles of those rows, and ``pairs_costs`` exactly the cost ``layout_cost`` gives them.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.passes.analysis import flat_pairs as flat_module
from einscade.passes.analysis import product as product_module
from einscade.passes.analysis import product_rows
from einscade.passes.analysis.block_layout import KeyTile
from einscade.passes.analysis.blocks import Classifier
from einscade.passes.analysis.cost import Heads, layout_cost, pairs_costs, rows_cost
from einscade.passes.analysis.masks import Axes, attention_mask
from einscade.passes.analysis.permute import find_folds, fold_mask
from einscade.passes.analysis.product import (
    _axis_spans,
    _factor_pairs,
    _factor_pairs_by_tile,
    flat_pairs,
    kinds,
    product_pairs,
)
from einscade.passes.analysis.product_rows import product_box_rows
from einscade.passes.analysis.tilings import aligned_box, make_tiling
from tests.passes.test_layout import masks

SETTINGS = settings(deadline=None, max_examples=30)


def _classifiers(bound):  # type: ignore[no-untyped-def]
    found = [Classifier(bound)]
    folds = find_folds(bound)
    if folds is not None:
        found.append(Classifier(fold_mask(bound, folds)))
    return [c for c in found if c.product is not None]


def _multiset(queries, keys, full, counts=None) -> Counter:  # type: ignore[no-untyped-def]
    """(query size, key size, full) of visited tiles, each kind ``counts`` times (once)."""
    found: Counter = Counter()
    many = [1] * len(queries) if counts is None else np.asarray(counts).tolist()
    columns = (np.asarray(c).tolist() for c in (queries, keys, full))
    tiles = zip(*columns, strict=True)
    for kind, count in zip(tiles, many, strict=True):
        found[kind] += count
    return found


@given(masks(), st.data())
@SETTINGS
def test_factor_arrays_equal_the_per_tile_answers(found, data) -> None:  # type: ignore[no-untyped-def]
    for classifier in _classifiers(found[0]):
        product = classifier.product
        factor = data.draw(st.integers(0, len(product.factors) - 1))
        axes = product.factors[factor][0]
        tile = tuple(data.draw(st.integers(1, product.extents[a])) for a in axes)
        key_tile = data.draw(st.one_of(st.none(), st.just(tile)))
        pad = data.draw(st.sampled_from([1, 4])) if axes[-1] == len(product.extents) - 1 else 1
        per_axis = [_axis_spans(product.extents[a], t) for a, t in zip(axes, tile, strict=True)]
        by_tile = _factor_pairs_by_tile(product, factor, per_axis, key_tile, pad)
        extents = [product.extents[a] for a in axes]
        arrays = _factor_pairs(product, factor, extents, tile, key_tile, pad)
        assert (arrays is None) == (by_tile is None)
        if arrays is not None:
            assert _multiset(*arrays) == _multiset(*by_tile)
            distinct = set(zip(*(a.tolist() for a in arrays[:3]), strict=True))
            assert len(distinct) == len(arrays[0])  # kinds: each once


@given(masks(), st.data())
@SETTINGS
def test_pairs_give_the_cost_of_the_classified_layout(found, data) -> None:  # type: ignore[no-untyped-def]
    for classifier in _classifiers(found[0]):
        extents = classifier.bound.query.extents
        tile = tuple(data.draw(st.integers(1, n)) for n in extents)
        mode = data.draw(st.sampled_from(["box", "grid"]))
        key_tile, pad = (tile if mode == "grid" else None), data.draw(st.sampled_from([1, 16]))
        pairs = classifier.product_pairs(tile, key_tile, mode, pad)
        if pairs is None:
            continue  # a union of key boxes: the general path classifies it
        layout = classifier.layout(tile, key_tile, key_mode=mode, pad=pad)
        tiles = [(layout.query_size(i), t) for i, row in enumerate(layout.key_tiles) for t in row]
        expected = Counter((q, t.size, t.full) for q, t in tiles)
        assert pairs[0] == len(layout.key_tiles)
        assert _multiset(*pairs[1:]) == expected
        tokens = math.prod(extents)
        (cost,) = pairs_costs([pairs], query_tokens=tokens, key_tokens=tokens)
        exact = layout_cost(layout)
        for field in ("query_tiles", "full_tiles", "partial_tiles", "iterations",
                      "computed_elements", "layout_elements", "partial_elements"):  # fmt: skip
            assert getattr(cost, field) == getattr(exact, field), field
        assert cost.time == pytest.approx(exact.time, rel=1e-9)


@given(masks(), st.data())
@SETTINGS
def test_flat_pairs_equal_the_classified_token_blocks(found, data) -> None:  # type: ignore[no-untyped-def]
    """Row-major token tiles (FlexAttention's blocks) of a product mask, aligned or not."""
    for classifier in _classifiers(found[0]):
        tokens = math.prod(classifier.bound.query.extents)
        query, key = data.draw(st.integers(1, tokens)), data.draw(st.integers(1, tokens))
        pairs = flat_pairs(classifier.product, query, key)
        layout = classifier.layout((query,), (key,), key_mode="grid")
        tiles = [(layout.query_size(i), t) for i, row in enumerate(layout.key_tiles) for t in row]
        assert pairs[0] == len(layout.key_tiles)
        assert _multiset(*pairs[1:]) == Counter((q, t.size, t.full) for q, t in tiles)


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300), st.booleans()), max_size=40))
@settings(deadline=None, max_examples=50)
def test_pairs_costs_equal_rows_cost(tiles) -> None:  # type: ignore[no-untyped-def]
    rows = [(q, (KeyTile((0,), (k,), full),)) for q, k, full in tiles]
    tokens = sum(q for q, _, _ in tiles) or 1
    heads = Heads(128, 128, 2)
    expected = rows_cost(rows, query_tokens=tokens, key_tokens=tokens, heads=heads)
    arrays = [
        np.array(c, dtype)
        for c, dtype in zip(zip(*tiles, strict=True), (np.int64, np.int64, bool), strict=False)
    ]
    if not tiles:
        arrays = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)]
    pairs = (len(tiles), *kinds(*arrays))
    (found,) = pairs_costs([pairs], query_tokens=tokens, key_tokens=tokens, heads=heads)
    assert found.computed_elements == expected.computed_elements
    assert found.partial_tiles == expected.partial_tiles
    assert found.time == pytest.approx(expected.time, rel=1e-9)


@given(masks(), st.data())
@SETTINGS
def test_kind_combinations_in_numpy_equal_those_in_python(found, data) -> None:  # type: ignore[no-untyped-def]
    """Many kinds are combined with numpy outer products: the same tiles as in Python."""
    for classifier in _classifiers(found[0]):
        tile = tuple(data.draw(st.integers(1, n)) for n in classifier.bound.query.extents)
        key_tile = data.draw(st.one_of(st.none(), st.just(tile)))
        python = product_pairs(classifier.product, tile, key_tile, 4)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(product_module, "PYTHON_COMBINATIONS", 0)
            numpy = product_pairs(classifier.product, tile, key_tile, 4)
        assert (python is None) == (numpy is None)
        if python is not None:
            assert python[0] == numpy[0]
            assert _multiset(*python[1:]) == _multiset(*numpy[1:])


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300), st.booleans()), max_size=40))
@settings(deadline=None, max_examples=50)
def test_kinds_count_every_tile_once(tiles) -> None:  # type: ignore[no-untyped-def]
    columns = [np.array([t[i] for t in tiles], dtype) for i, dtype in enumerate((int, int, bool))]
    queries, keys, full, counts = kinds(*columns)
    assert _multiset(queries, keys, full, counts) == Counter(tiles)
    distinct = set(zip(queries.tolist(), keys.tolist(), full.tolist(), strict=True))
    assert len(distinct) == len(queries)


@pytest.mark.parametrize(
    ("extents", "tile", "box"),
    [((64, 64), (64,), (1, 64)), ((64, 64), (128,), (2, 64)), ((56, 56), (64,), None),
     ((2, 2, 32, 32), (64,), (1, 1, 2, 32)), ((8, 4), (2,), (1, 2)), ((8, 4), (8, 4), (8, 4)),
     ((8, 4), (6,), None)],
)  # fmt: skip
def test_aligned_token_ranges_are_boxes(extents, tile, box) -> None:  # type: ignore[no-untyped-def]
    assert aligned_box(extents, tile) == box
    if box is None or len(tile) != 1:
        return
    axes = Axes("p", tuple(f"p{a}" for a in range(len(extents))), extents)
    flat, boxes = make_tiling("query", axes, tile), make_tiling("query", axes, box)
    assert flat.count == boxes.count
    for index in range(flat.count):
        a, b = flat.origin_at(index), boxes.origin_at(index)
        tokens = range(a[0], a[0] + flat.shape(a)[0])
        lo = [o for o in b]
        hi = [o + s - 1 for o, s in zip(b, boxes.shape(b), strict=True)]
        strides = axes.strides
        corner = sum(c * s for c, s in zip(lo, strides, strict=True))
        last = sum(c * s for c, s in zip(hi, strides, strict=True))
        assert (tokens[0], tokens[-1]) == (corner, last)


def test_a_folded_dilated_window_is_a_product_of_single_axes() -> None:
    """Folding simplifies ``x % 2 == xk % 2`` and the window into conditions on the group
    axis and on the position axis alone: four factors, each with a small dense table."""
    bound = attention_mask(neighborhood_attention((16, 16), 5, dilation=2)).bind()
    folded = Classifier(fold_mask(bound, find_folds(bound)))
    assert folded.product is not None
    assert [axes for axes, _ in folded.product.factors] == [(0,), (1,), (2,), (3,)]
    shapes = [folded.evaluator.groups[i].dense.allowed.shape for _, i in folded.product.factors]
    assert sorted(shapes) == [(2, 2), (2, 2), (8, 8), (8, 8)]


@given(masks(), st.data())
@SETTINGS
def test_array_rows_equal_the_per_row_path(found, data) -> None:  # type: ignore[no-untyped-def]
    """The box rows built from factor-tile arrays (product_rows.py) are the rows the per-row
    product path builds, tile for tile (so the soundness tests of those rows carry over)."""
    for classifier in _classifiers(found[0]):
        extents = classifier.bound.query.extents
        tile = tuple(data.draw(st.integers(1, n)) for n in extents)
        pad = data.draw(st.sampled_from([1, 4, 16]))
        arrays = product_box_rows(classifier.product, extents, tile, pad)
        if arrays is None:
            continue  # a union of key boxes: the per-row path decides
        queries = make_tiling("query", classifier.bound.query, tile)
        expected = []
        for origin in queries.origins():
            shape = queries.shape(origin)
            row = classifier._product_row(queries, None, origin, shape, pad, {})
            assert row is not None
            expected.append((origin, shape, row[0], row[1]))
        origins, shapes, rows, dropped = arrays
        assert list(zip(origins, shapes, rows, strict=True)) == [e[:3] for e in expected]
        assert [t.full for r in rows for t in r] == [t.full for e in expected for t in e[2]]
        assert dropped == sum(e[3] for e in expected)


@given(masks(), st.data())
@SETTINGS
def test_flat_counts_read_off_finer_tiles_are_exact(found, data) -> None:  # type: ignore[no-untyped-def]
    """Coarser token tiles reuse the prefix counts of finer ones (sizes dividing theirs):
    the same visited blocks as counting them afresh, and as the classified layout."""
    for classifier in _classifiers(found[0]):
        tokens = math.prod(classifier.bound.query.extents)
        query, key = data.draw(st.integers(1, tokens)), data.draw(st.integers(1, tokens))
        coarse = (query * data.draw(st.integers(1, 4)), key * data.draw(st.integers(1, 4)))
        flat_pairs(classifier.product, query, key)  # counted, kept for the coarser tiles
        assert (query, key) in classifier.product.flat_counts
        derived = flat_pairs(classifier.product, *coarse)
        fresh = flat_pairs(Classifier(classifier.bound).product, *coarse)
        assert derived[0] == fresh[0]
        assert _multiset(*derived[1:]) == _multiset(*fresh[1:])
        layout = classifier.layout((coarse[0],), (coarse[1],), key_mode="grid")
        tiles = [(layout.query_size(i), t) for i, row in enumerate(layout.key_tiles) for t in row]
        assert _multiset(*derived[1:]) == Counter((q, t.size, t.full) for q, t in tiles)


def test_array_rows_take_the_halo_and_maxvit_box_tilings() -> None:
    """The array path answers (no union) for HaloNet and MaxViT box tilings, and the layout
    built from it is the per-row path's."""
    for cascade in (halo_attention((8, 8), 4, 1), maxvit_attention((8, 8), 2, "grid")):
        classifier = Classifier(attention_mask(cascade).bind(None, None, None))
        found = product_box_rows(classifier.product, (8, 8), (4, 4), 4)
        assert found is not None
        queries = make_tiling("query", classifier.bound.query, (4, 4))
        rows = [
            classifier._product_row(queries, None, o, queries.shape(o), 4, {})[0]
            for o in queries.origins()
        ]
        assert found[2] == rows


@given(st.integers(1, 12), st.integers(1, 14), st.one_of(st.none(), st.integers(1, 14)))
@settings(deadline=None, max_examples=50)
def test_free_factor_kinds_equal_the_per_tile_answers(extent, tile, key_tile) -> None:  # type: ignore[no-untyped-def]
    """A factor no conjunct reads (MaxViT's folded position axes) is counted in Python: the
    same kinds, in the same order, as tile by tile."""
    bound = attention_mask(maxvit_attention((8, 8), 2, "grid")).bind(None, None, None)
    product = Classifier(fold_mask(bound, find_folds(bound))).product
    free = next(f for f, (_, index) in enumerate(product.factors) if index is None)
    (axis,) = product.factors[free][0]
    product.extents = tuple(extent if a == axis else n for a, n in enumerate(product.extents))
    sub_key = None if key_tile is None else (key_tile,)
    per_axis = [_axis_spans(extent, tile)]
    expected = kinds(*_factor_pairs_by_tile(product, free, per_axis, sub_key, 1))
    found = _factor_pairs(product, free, [extent], (tile,), sub_key, 1)
    for a, b in zip(found, expected, strict=True):
        assert a.dtype == b.dtype
        assert np.array_equal(a, b)


@given(masks(), st.data())
@SETTINGS
def test_prefix_counts_by_axis_equal_those_by_boxes(found, data) -> None:  # type: ignore[no-untyped-def]
    """The two ways of counting allowed pairs among token prefixes (axis by axis for
    one-axis factors, prefix boxes otherwise) agree, so both stay checked."""
    for classifier in _classifiers(found[0]):
        product = classifier.product
        tokens = math.prod(product.extents)
        q_edges = flat_module._edges(tokens, data.draw(st.integers(1, tokens)))
        k_edges = flat_module._edges(tokens, data.draw(st.integers(1, tokens)))
        by_axis = flat_module._prefix_counts(product, q_edges, k_edges)
        by_boxes = flat_module._box_prefix_counts(product, q_edges, k_edges)
        assert np.array_equal(by_axis, by_boxes)


@given(masks(), st.data())
@SETTINGS
def test_bit_answers_equal_the_array_answers(found, data) -> None:  # type: ignore[no-untyped-def]
    """Factors answered with bits (factor_bits.py, rows built in Python) give the pairs and
    the box rows that the array path (block sums, gathers) gives."""
    for classifier in _classifiers(found[0]):
        extents = classifier.bound.query.extents
        tile = tuple(data.draw(st.integers(1, n)) for n in extents)
        pad = data.draw(st.sampled_from([1, 4, 16]))
        tilings = [(tile, None, "box", pad), (tile, tile, "grid", 1)]
        bits = Classifier(classifier.bound)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(product_module, "BITS_LIMIT", 0)
            patch.setattr(product_rows, "PYTHON_ROWS", 0)
            arrays = Classifier(classifier.bound)
            expected = [arrays.product_pairs(*t) for t in tilings]
            expected_rows = product_box_rows(arrays.product, extents, tile, pad)
        for one, many in zip(expected, [bits.product_pairs(*t) for t in tilings], strict=True):
            assert (one is None) == (many is None)
            if one is not None:
                assert one[0] == many[0]
                for a, b in zip(one[1:], many[1:], strict=True):
                    assert np.asarray(a).tolist() == np.asarray(b).tolist()
        assert product_box_rows(bits.product, extents, tile, pad) == expected_rows
