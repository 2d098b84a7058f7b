"""The equal-lookup shortcut (lookup_regions.py): the same regions and layouts as the general
interval path, and sound against brute force, for random document ids, sizes and tiles."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.frontends.softmax import softmax_attention
from einscade.ir import parse
from einscade.passes.analysis.blocks import Classifier
from einscade.passes.analysis.cost import rows_cost
from einscade.passes.analysis.interval_core import FALSE, TRUE, Interval
from einscade.passes.analysis.masks import attention_mask

SETTINGS = settings(deadline=None, max_examples=60)

SWAPPED = """
cascade @swapped(Q[b, p, e], K[b, m, e], V[b, m, f], doc[c, n], tag[b, p]) -> (AV) {
  QK[b, m, p] = Q[b, p, e] * K[b, m, e] :: sum(e) if tag[b, p] == doc[1, m]
  AV[b, p, f] = QK[b, m, p] * V[b, m, f] :: sum(m)
}
"""


def _ids(draw, n: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Document ids: packed runs (the common case) or any sequence (runs may repeat)."""
    values = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    return torch.tensor(sorted(values) if draw(st.booleans()) else values)


@st.composite
def documents(draw):  # type: ignore[no-untyped-def]
    """A bound documents mask (batch 1 classified) with its dense truth."""
    n = draw(st.integers(1, 80))
    doc = _ids(draw, n)
    mask = attention_mask(softmax_attention(documents=True))
    lookups = {"doc": torch.stack([doc.flip(0), doc])}
    bound = mask.bind({"P": n, "M": n}, None, lookups, {"b": 1})
    return bound, doc[:, None] == doc[None, :]


@st.composite
def swapped(draw):  # type: ignore[no-untyped-def]
    """``tag[b, p] == doc[1, m]``: sides swapped, two tables, a constant index, P != M."""
    p, m = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    tag, line = _ids(draw, p), _ids(draw, m)
    doc = torch.stack([line.flip(0), line])
    mask = attention_mask(parse(SWAPPED))
    bound = mask.bind({"P": p, "M": m}, None, {"doc": doc, "tag": tag[None]}, {"b": 0})
    return bound, tag[:, None] == line[None, :]


@st.composite
def long_lines(draw):  # type: ignore[no-untyped-def]
    """``swapped`` with a key line longer than the key axis (keys past it never read)."""
    p, m, extra = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(0, 8))
    tag, line = _ids(draw, p), _ids(draw, m + extra)
    doc = torch.stack([line.flip(0), line])
    mask = attention_mask(parse(SWAPPED))
    bound = mask.bind({"P": p, "M": m}, None, {"doc": doc, "tag": tag[None]}, {"b": 0})
    return bound, tag[:, None] == line[None, :m]


@st.composite
def tilings(draw, n: int, m: int):  # type: ignore[no-untyped-def]
    mode = draw(st.sampled_from(["grid", "box"]))
    query = (draw(st.integers(1, n + 1)),)
    key = (draw(st.integers(1, m + 1)),) if mode == "grid" else None
    return query, key, mode, draw(st.sampled_from([1, 4, 16])), draw(st.sampled_from([0, 4]))


def _classifiers(bound, split_limit: int):  # type: ignore[no-untyped-def]
    """(with the shortcut, general path only); interval reasoning alone (no dense tables)."""
    fast = Classifier(bound, split_limit, dense_limit=0)
    general = Classifier(bound, split_limit, dense_limit=0)
    general.equal_lookup = None
    assert fast.equal_lookup is not None, "the shortcut must apply to this mask"
    return fast, general


def _check_sound(layout, dense: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    covered = torch.zeros_like(dense)
    for i, tiles in enumerate(layout.key_tiles):
        queries = layout.query_tokens(i)
        for tile in tiles:
            keys = layout.key_tokens(tile)
            block = dense[queries][:, keys]
            assert not tile.full or bool(block.all()), f"masked pair in full tile {tile}"
            covered[queries[:, None], keys[None, :]] = True
    assert not bool((dense & ~covered).any()), "an allowed pair lies in no visited tile"


@pytest.mark.parametrize("masks", [documents, swapped, long_lines])
@given(data=st.data(), split_limit=st.sampled_from([1, 4, 16]))
@SETTINGS
def test_same_layouts_and_rows_as_the_general_path(masks, data, split_limit) -> None:  # type: ignore[no-untyped-def]
    bound, dense = data.draw(masks())
    n, m = bound.query.extents[0], bound.key.extents[0]
    query, key, mode, pad, split = data.draw(tilings(n, m))
    fast, general = _classifiers(bound, split_limit)
    options = {"key_mode": mode, "pad": pad, "split": split}
    layout = fast.layout(query, key, **options)
    assert layout == general.layout(query, key, **options)
    _check_sound(layout, dense)
    indices = list(range(fast.query_tile_count(query)))
    for evaluate, refusals in ((False, False), (False, True), (True, True)):
        rows = {"indices": indices, "evaluate": evaluate, "refusals": refusals, **options}
        assert fast.rows(query, key, **rows) == general.rows(query, key, **rows)


@given(documents(), st.data())
@SETTINGS
def test_regions_match_the_evaluator(case, data) -> None:  # type: ignore[no-untyped-def]
    bound, dense = case
    n = bound.query.extents[0]
    lo = data.draw(st.integers(0, n - 1))
    hi = data.draw(st.integers(lo, n - 1))
    fast, general = _classifiers(bound, split_limit=0)  # no per-query pieces
    qboxes = [(Interval(lo, hi),)]
    region, fail = fast.equal_lookup.regions(qboxes, True)
    assert region == general.evaluator.key_region(qboxes)
    allowed = dense[lo : hi + 1].any(0).nonzero().flatten().tolist()
    assert all(any(b[0].lo <= k <= b[0].hi for b in region) for k in allowed)
    if region:
        assert fail == general.evaluator.fail_region(qboxes)
    refused = (~dense[lo : hi + 1]).any(0).nonzero().flatten().tolist()
    assert all(any(b[0].lo <= k <= b[0].hi for b in fail) for k in refused)


def test_declines_other_masks() -> None:
    doc = torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2]])
    causal = attention_mask(softmax_attention(causal=True, documents=True))
    bound = causal.bind({"P": 8, "M": 8}, None, {"doc": doc})
    assert Classifier(bound, dense_limit=0).equal_lookup is None  # two conjuncts
    plain = attention_mask(softmax_attention(documents=True)).bind({"P": 8, "M": 8}, None,
                                                                    {"doc": doc})  # fmt: skip
    assert Classifier(plain).equal_lookup is None  # answered by a dense table
    assert Classifier(plain, dense_limit=0).equal_lookup is not None


# -- the array path: every tile of a 1-D tiling at once ------------------------------------


@pytest.mark.parametrize("masks", [documents, swapped, long_lines])
@given(data=st.data(), split_limit=st.sampled_from([0, 1, 4, 16]))
@SETTINGS
def test_tile_regions_equal_the_per_tile_regions(masks, data, split_limit) -> None:  # type: ignore[no-untyped-def]
    bound, _ = data.draw(masks())
    n = bound.query.extents[0]
    tile = data.draw(st.integers(1, n + 2))
    fast, _ = _classifiers(bound, split_limit)
    lookup = fast.equal_lookup
    tiles = lookup.tile_regions(n, tile)
    assert tiles is not None
    for index, start in enumerate(range(0, n, tile)):
        qboxes = [(Interval(start, min(start + tile, n) - 1),)]
        for refusals in (False, True):
            assert tiles.regions(index, refusals) == lookup.regions(qboxes, refusals)


@pytest.mark.parametrize("masks", [documents, long_lines])
@given(data=st.data(), split_limit=st.sampled_from([0, 4]))
@SETTINGS
def test_truth_equals_the_evaluator(masks, data, split_limit) -> None:  # type: ignore[no-untyped-def]
    bound, dense = data.draw(masks())
    n, m = bound.query.extents[0], bound.key.extents[0]
    fast, general = _classifiers(bound, split_limit)

    def box(extent: int):  # type: ignore[no-untyped-def]
        lo = data.draw(st.integers(0, extent - 1))
        return (Interval(lo, data.draw(st.integers(lo, extent - 1))),)

    qboxes = [box(n) for _ in range(data.draw(st.integers(1, 2)))]
    kboxes = [box(m) for _ in range(data.draw(st.integers(1, 2)))]
    found = fast.equal_lookup.truth(qboxes, kboxes)
    sizes = [q[0].hi - q[0].lo + 1 for q in qboxes]
    assert (found is None) == any(1 < s <= split_limit for s in sizes)
    if found is not None:
        assert found == general.evaluator.truth(qboxes, kboxes)
        pairs = [dense[q.lo : q.hi + 1, k.lo : k.hi + 1] for (q,) in qboxes for (k,) in kboxes]
        assert found != TRUE or all(bool(p.all()) for p in pairs)
        assert found != FALSE or not any(bool(p.any()) for p in pairs)


@pytest.mark.parametrize("masks", [documents, swapped, long_lines])
@given(data=st.data(), split_limit=st.sampled_from([1, 16]))
@SETTINGS
def test_tile_kinds_equal_the_sampled_rows(masks, data, split_limit) -> None:  # type: ignore[no-untyped-def]
    """Unevaluated grid rows as (size, full) stand-ins: the rows' tiles, and their cost."""
    bound, _ = data.draw(masks())
    n, m = bound.query.extents[0], bound.key.extents[0]
    query, key = (data.draw(st.integers(1, n + 1)),), (data.draw(st.integers(1, m + 1)),)
    fast, general = _classifiers(bound, split_limit)
    indices = list(range(fast.query_tile_count(query)))
    for refusals in (False, True):
        options = {"indices": indices, "evaluate": False, "refusals": refusals}
        kinds = fast.rows(query, key, kinds=True, **options)
        rows = general.rows(query, key, **options)
        as_kinds = [(size, [(t.size, t.full) for t in tiles]) for size, tiles in rows]
        assert [(size, [(t.size, t.full) for t in tiles]) for size, tiles in kinds] == as_kinds
        totals = {"query_tokens": n, "key_tokens": m}
        assert rows_cost(kinds, **totals) == rows_cost(rows, **totals)


@pytest.mark.parametrize("values", [[2**60, 2**60, 3], [0.5, 0.5, 1.5]], ids=["huge", "float"])
def test_tables_off_the_array_path_take_the_per_tile_one(values) -> None:  # type: ignore[no-untyped-def]
    doc = torch.tensor([values * 6])
    bound = attention_mask(softmax_attention(documents=True)).bind({"P": 18, "M": 18}, None,
                                                                   {"doc": doc})  # fmt: skip
    fast, general = _classifiers(bound, split_limit=1)
    assert fast.equal_lookup.tile_regions(18, 4) is None
    assert fast.equal_lookup.truth([(Interval(0, 5),)], [(Interval(0, 5),)]) is None
    for key_mode, key in (("box", None), ("grid", (4,))):
        layout = fast.layout((4,), key, key_mode=key_mode, pad=1, split=2)
        assert layout == general.layout((4,), key, key_mode=key_mode, pad=1, split=2)


def test_documents_need_no_evaluator() -> None:
    """The documents layout is classified from the lookup tables alone (no interval code
    compiled); a 1-D grid is never a product."""
    doc = torch.repeat_interleave(torch.arange(4), torch.tensor([40, 24, 50, 14]))[None]
    bound = attention_mask(softmax_attention(documents=True)).bind({"P": 128, "M": 128}, None,
                                                                   {"doc": doc})  # fmt: skip
    fast = Classifier(bound, dense_limit=0)
    layout = fast.layout((32,), None, key_mode="box", pad=16, split=16)
    assert fast.product is None and "evaluator" not in vars(fast)
    general = Classifier(bound, dense_limit=0)
    general.equal_lookup = None
    assert layout == general.layout((32,), None, key_mode="box", pad=16, split=16)
