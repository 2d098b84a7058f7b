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

from einscade.frontends.local import neighborhood_attention
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
)
from einscade.passes.analysis.tilings import aligned_box, make_tiling
from tests.passes.test_layout import masks

SETTINGS = settings(deadline=None, max_examples=30)


def _classifiers(bound):  # type: ignore[no-untyped-def]
    found = [Classifier(bound)]
    folds = find_folds(bound)
    if folds is not None:
        found.append(Classifier(fold_mask(bound, folds)))
    return [c for c in found if c.product is not None]


def _multiset(queries, keys, full) -> Counter:  # type: ignore[no-untyped-def]
    return Counter(zip(queries.tolist(), keys.tolist(), full.tolist(), strict=True))


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
        arrays = _factor_pairs(product, factor, per_axis, key_tile, pad)
        assert (arrays is None) == (by_tile is None)
        if arrays is not None:
            assert _multiset(*arrays) == _multiset(*by_tile)


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
    pairs = (len(tiles), *arrays)
    (found,) = pairs_costs([pairs], query_tokens=tokens, key_tokens=tokens, heads=heads)
    assert found.computed_elements == expected.computed_elements
    assert found.partial_tiles == expected.partial_tiles
    assert found.time == pytest.approx(expected.time, rel=1e-9)


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
