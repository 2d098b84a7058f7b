"""Layout selection: token folding is exact, every candidate and every chosen layout is sound
(permuted ones through their permutation back to the original tokens), and the choices the
issue asks for are made: box tiles for 2-D NA, folded groups for dilation and MaxViT grids."""

from __future__ import annotations

import dataclasses
import itertools
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.passes.analysis.blocks import Classifier, classify, count_allowed
from einscade.passes.analysis.intervals import BoxEvaluator, Interval
from einscade.passes.analysis.layout import (
    BOX_SHAPES,
    LayoutChoice,
    LayoutSpec,
    candidate_specs,
    choose_layout,
)
from einscade.passes.analysis.masks import BoundMask, attention_mask
from einscade.passes.analysis.permute import TokenPermutation, find_folds, fold_mask
from tests.oracles.windows import maxvit_mask, natten_mask
from tests.passes.test_blocks import check_layout

SETTINGS = settings(deadline=None, max_examples=20)


def seq(n: int) -> dict[str, int]:
    return {"P": n, "M": n}


@st.composite
def masks(draw):  # type: ignore[no-untyped-def]
    """A small bound mask of a random family: (bound mask, its dense mask)."""
    family = draw(st.sampled_from(["natten", "halo", "maxvit", "sliding", "documents"]))
    if family == "natten":
        ndim = draw(st.integers(1, 3))
        grid = tuple(draw(st.integers(2, {1: 24, 2: 10, 3: 5}[ndim])) for _ in range(ndim))
        dilation = tuple(draw(st.sampled_from([d for d in (1, 2, 3) if n >= d])) for n in grid)
        kernel = tuple(draw(st.integers(1, n // d)) for n, d in zip(grid, dilation, strict=True))
        stride = tuple(draw(st.integers(1, k)) for k in kernel)
        cascade = neighborhood_attention(grid, kernel, stride, dilation)
        sizes = seq(grid[0]) if ndim == 1 else None
        return attention_mask(cascade).bind(sizes), natten_mask(grid, kernel, stride, dilation)
    if family == "maxvit":
        axes = draw(st.lists(st.sampled_from([(4, 2), (6, 3), (6, 2), (8, 2)]), min_size=2,
                             max_size=2))  # fmt: skip
        grid, size = tuple(n for n, _ in axes), tuple(s for _, s in axes)
        mode = draw(st.sampled_from(["block", "grid"]))
        bound = attention_mask(maxvit_attention(grid, size, mode)).bind()
        return bound, maxvit_mask(grid, size, mode)
    if family == "halo":
        grid = (draw(st.integers(2, 10)), draw(st.integers(2, 10)))
        block, halo = draw(st.integers(1, 4)), draw(st.integers(0, 2))
        bound = attention_mask(halo_attention(grid, block, halo)).bind()
        return bound, bound.evaluate_dense()
    n = draw(st.integers(1, 80))
    if family == "sliding":
        window, sinks = draw(st.integers(0, 20)), draw(st.integers(0, 4))
        cascade = softmax_attention(causal=True, window=(window, 0), sinks=sinks)
        bound = attention_mask(cascade).bind(seq(n))
        return bound, bound.evaluate_dense()
    ids = sorted(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    cascade = softmax_attention(causal=draw(st.booleans()), documents=True)
    bound = attention_mask(cascade).bind(seq(n), None, {"doc": torch.tensor([ids])})
    return bound, bound.evaluate_dense()


def check_choice(choice: LayoutChoice, dense: torch.Tensor) -> None:
    """Sound in the layout's own (maybe folded) tokens and, through the permutation, in the
    original ones: full tiles hold only allowed pairs, every allowed pair is covered."""
    order = torch.arange(dense.shape[0])
    if choice.permutation is not None:
        order = choice.permutation.order()
        assert torch.equal(order.sort().values, torch.arange(dense.shape[0]))
    check_layout(choice.layout, dense[order][:, order])
    covered = torch.zeros_like(dense)
    for i, tiles in enumerate(choice.layout.key_tiles):
        queries = choice.query_tokens(i)
        for tile in tiles:
            keys = choice.key_tokens(tile)
            assert not tile.full or bool(dense[queries][:, keys].all())
            covered[queries[:, None], keys[None, :]] = True
    assert not bool((dense & ~covered).any())


# -- folding -----------------------------------------------------------------------------


@given(masks())
@SETTINGS
def test_folded_masks_equal_the_original_through_the_permutation(found) -> None:  # type: ignore[no-untyped-def]
    bound, dense = found
    folds = find_folds(bound)
    if folds is None:
        return
    folded = fold_mask(bound, folds)
    order = TokenPermutation(bound.query.extents, folds).order()
    assert torch.equal(folded.evaluate_dense(), dense[order][:, order])


def test_folds_come_from_dilation_and_grid_groups() -> None:
    dilated = attention_mask(neighborhood_attention((12, 10), 3, dilation=(2, 1))).bind()
    assert find_folds(dilated) == (2, 1)
    grid = attention_mask(maxvit_attention((12, 8), (3, 2), "grid")).bind()
    assert find_folds(grid) == (4, 4)
    assert find_folds(attention_mask(neighborhood_attention((12, 10), 3)).bind()) is None
    uneven = attention_mask(neighborhood_attention((11,), 3, dilation=2)).bind(seq(11))
    assert find_folds(uneven) is None  # 11 tokens do not split into 2 equal groups
    permutation = TokenPermutation((4, 6), (2, 3))
    assert permutation.folded_extents == (2, 3, 2, 2)
    # folded (g_x, g_y, i_x, i_y) = (1, 2, 0, 1) is x = 2 * 0 + 1, y = 3 * 1 + 2
    assert int(permutation.order()[((1 * 3 + 2) * 2 + 0) * 2 + 1]) == 1 * 6 + 5
    assert permutation.describe() == "fold 4->2x2, 6->3x2"


def test_folding_simplifies_the_window_to_a_dense_one() -> None:
    bound = attention_mask(neighborhood_attention((12, 10), (5, 3), dilation=2)).bind()
    folded = fold_mask(bound, (2, 2))
    text = str(folded.predicate)
    assert "%" not in text and "//" not in text  # x = 2 i + g: no divisions are left


# -- soundness ---------------------------------------------------------------------------


@given(masks(), st.data())
@settings(deadline=None, max_examples=15)
def test_every_candidate_is_sound(found, data) -> None:  # type: ignore[no-untyped-def]
    bound, dense = found
    folds = find_folds(bound)
    classifiers = {None: (Classifier(bound), dense)}
    if folds is not None:
        order = TokenPermutation(bound.query.extents, folds).order()
        classifiers[folds] = (Classifier(fold_mask(bound, folds)), dense[order][:, order])
    specs = candidate_specs(bound, folds)
    for spec in data.draw(st.lists(st.sampled_from(specs), min_size=1, max_size=4)):
        classifier, expected = classifiers[spec.folds]
        layout = classifier.layout(spec.query_tile, spec.key_tile, key_mode=spec.key_mode,
                                   pad=spec.pad, split=spec.split)  # fmt: skip
        layout = dataclasses.replace(
            layout, useful_elements=count_allowed(layout, classifier.bound)
        )
        check_layout(layout, expected)


@given(masks())
@SETTINGS
def test_the_chosen_layout_is_sound(found) -> None:  # type: ignore[no-untyped-def]
    bound, dense = found
    choice = choose_layout(bound, count_useful=True, sample=3)
    check_choice(choice, dense)
    assert choice.cost.useful_elements == int(dense.sum())
    assert choice.cost.computed_elements >= choice.cost.useful_elements


@given(masks(), st.data())
@SETTINGS
def test_fail_region_holds_every_refused_key(found, data) -> None:  # type: ignore[no-untyped-def]
    bound, dense = found
    evaluator = BoxEvaluator(bound.predicate, bound.query, bound.key, bound.tables)
    box = []
    for n in bound.query.extents:
        lo = data.draw(st.integers(0, n - 1))
        box.append(Interval(lo, data.draw(st.integers(lo, n - 1))))
    fail = evaluator.fail_region([tuple(box)])
    queries = _tokens(bound, box)
    for key in range(dense.shape[1]):
        if not bool(dense[queries, key].all()):
            coords = _coords(bound, key)
            assert any(all(i.lo <= c <= i.hi for c, i in zip(coords, f, strict=True)) for f in fail)


def _tokens(bound: BoundMask, box: list[Interval]) -> torch.Tensor:
    ranges = [range(i.lo, i.hi + 1) for i in box]
    strides = bound.query.strides
    return torch.tensor(
        [sum(c * s for c, s in zip(p, strides, strict=True)) for p in itertools.product(*ranges)]
    )


def _coords(bound: BoundMask, token: int) -> tuple[int, ...]:
    return tuple(
        (token // s) % n for s, n in zip(bound.key.strides, bound.key.extents, strict=True)
    )


def test_a_split_key_box_keeps_sinks_apart_and_its_core_full() -> None:
    mask = attention_mask(softmax_attention(causal=True, window=(256, 0), sinks=4))
    layout = classify(mask, seq(512), None, None, (64,), key_mode="box", pad=1, split=16,
                      count_useful=True)  # fmt: skip
    # Queries 448..511 see keys 192..511 and the sinks 0..3 (which every query sees).
    assert [(t.origin, t.shape, t.full) for t in layout.key_tiles[-1]] == [
        ((0,), (4,), True),
        ((192,), (64,), False),  # the window's lower edge
        ((256,), (192,), True),  # no query refuses these
        ((448,), (64,), False),  # the diagonal
    ]
    check_layout(layout, mask.evaluate_dense(seq(512)))
    short = classify(mask, seq(512), {"window_left": 40}, None, (64,),
                     key_mode="box", pad=1, split=16)  # fmt: skip
    assert all(len(row) <= 2 for row in short.key_tiles)  # too little core to split off


# -- choices -----------------------------------------------------------------------------


def test_two_dimensional_neighborhoods_get_box_tiles() -> None:
    choice = choose_layout(neighborhood_attention((56, 56), 7))
    assert choice.spec.key_mode == "box" and len(choice.spec.query_tile) == 2
    assert choice.permutation is None
    useful = 56 * 56 * 49
    assert choice.cost.computed_elements / useful <= 4.5


def test_maxvit_grid_attention_is_folded_into_full_blocks() -> None:
    choice = choose_layout(maxvit_attention((56, 56), 7, "grid"), count_useful=True)
    assert choice.permutation is not None and choice.permutation.folds == (8, 8)
    assert choice.cost.partial_tiles == 0
    assert choice.cost.work_ratio is not None and choice.cost.work_ratio <= 1.8
    assert choice.describe().startswith("fold 56->8x7, 56->8x7;")


def test_dilation_is_folded_into_dense_neighborhoods() -> None:
    choice = choose_layout(neighborhood_attention((64, 64), 13, dilation=2))
    assert choice.permutation is not None and choice.permutation.folds == (2, 2)
    assert choice.cost.permutation_time > 0  # the gather and scatter are counted
    assert choice.cost.computed_elements / (64 * 64 * 169) <= 3.0


def test_blocked_attention_is_all_full_tiles() -> None:
    choice = choose_layout(neighborhood_attention((16, 32, 32), 4, stride=4), count_useful=True)
    assert choice.cost.partial_tiles == 0 and choice.cost.work_ratio == 1.0


def test_candidates_are_listed_with_their_estimates() -> None:
    bound = attention_mask(neighborhood_attention((24, 24), 5, dilation=2)).bind()
    specs = candidate_specs(bound, find_folds(bound))
    shapes = {s.query_tile for s in specs if s.folds is None and s.key_mode == "box"}
    assert set(BOX_SHAPES[2]) <= shapes
    assert any(s.folds == (2, 2) and s.query_tile[:2] == (1, 1) for s in specs)
    assert {(s.query_tile, s.key_tile) for s in specs if s.key_tile and len(s.key_tile) == 1} == {
        ((q,), (k,)) for q in (64, 128) for k in (64, 128)
    }
    choice = choose_layout(bound)
    assert {c.spec for c in choice.candidates} == set(specs)
    times = [c.cost.time for c in choice.candidates if c.sampled > 2]
    assert choice.candidates[0].spec == choice.spec and times == sorted(times)


def test_given_specs_replace_the_candidates() -> None:
    mask = attention_mask(softmax_attention(causal=True))
    spec = LayoutSpec((32,), "grid", (32,))
    choice = choose_layout(mask, seq(256), specs=[spec], count_useful=True)
    assert choice.spec == spec and len(choice.candidates) == 1
    assert choice.layout.to_block_mask_arrays().kv_num_blocks.shape == (8,)
    with pytest.raises(ValueError, match="does not fold"):
        choose_layout(mask, seq(256), specs=[LayoutSpec((32,), "grid", (32,), folds=(2,))])


def test_a_million_tokens_are_analysed_fast() -> None:
    """64 x 128 x 128 tokens, 7 x 7 x 7 window (the issue asks < 2 s on an idle machine; the
    bound here leaves room for a busy one)."""
    start = time.perf_counter()
    choice = choose_layout(neighborhood_attention((64, 128, 128), 7))
    assert time.perf_counter() - start < 6.0
    assert choice.spec.key_mode == "box" and len(choice.layout.key_tiles) == choice.cost.query_tiles


@given(masks(), st.data())
@SETTINGS
def test_the_product_path_agrees_with_the_general_one(found, data) -> None:  # type: ignore[no-untyped-def]
    """Per-factor classification of a product mask gives the tiles of the general path."""
    bound, _ = found
    if Classifier(bound).product is None:
        return
    tile = tuple(data.draw(st.integers(1, n)) for n in bound.query.extents)
    mode = data.draw(st.sampled_from(["box", "grid"]))
    key_tile, pad = (tile if mode == "grid" else None), data.draw(st.sampled_from([1, 4, 16]))
    product = Classifier(bound).layout(tile, key_tile, key_mode=mode, pad=pad)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Classifier, "_is_product", lambda *args: False)
        general = Classifier(bound).layout(tile, key_tile, key_mode=mode, pad=pad)
    assert product.key_tiles == general.key_tiles
