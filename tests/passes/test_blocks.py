"""Block classification of every mask family against brute force.

Soundness, on random small configurations of each family: the mask read off the cascade
(``Mask.evaluate_dense``) equals the independent oracle of tests/oracles/windows.py; every
tile called full has all pairs allowed; every allowed pair lies in a visited tile (so in grid
mode an unvisited tile has none); the counts add up. Tightness on the cases the issue names
(causal, blocked and 1-D/2-D NA), agreement with FlexAttention's ``create_block_mask``, and
the scaling case (1M-token 3-D NA) close the file.
"""

from __future__ import annotations

import math
import time
import tracemalloc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles.windows import (
    causal_mask,
    document_mask,
    halo_mask,
    maxvit_mask,
    natten_mask,
    prefix_lm_mask,
    sinks_or,
    sliding_window_mask,
)

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir.errors import BindError
from einscade.passes.analysis.blocks import BlockLayout, classify
from einscade.passes.analysis.dense_groups import DENSE_LIMIT
from einscade.passes.analysis.masks import attention_mask

SETTINGS = settings(deadline=None, max_examples=40)


def check_layout(layout: BlockLayout, dense: torch.Tensor) -> None:
    """Soundness of a layout against the dense mask, and its bookkeeping."""
    covered = torch.zeros_like(dense)
    queries_seen, computed = [], 0
    for i, tiles in enumerate(layout.key_tiles):
        queries = layout.query_tokens(i)
        queries_seen.append(queries)
        for tile in tiles:
            keys = layout.key_tokens(tile)
            block = dense[queries][:, keys]
            assert not tile.full or bool(block.all()), f"full tile {tile} of query tile {i}"
            covered[queries[:, None], keys[None, :]] = True
            computed += len(queries) * len(keys)
    assert not bool((dense & ~covered).any()), "an allowed pair lies in no visited tile"
    assert torch.equal(torch.cat(queries_seen).sort().values, torch.arange(dense.shape[0]))
    assert layout.computed_elements == computed == sum(layout.work_per_query_tile())
    assert computed == sum(work for _, _, work in layout.tile_work())
    assert layout.useful_elements == int(dense.sum())
    assert layout.num_full == sum(t.full for row in layout.key_tiles for t in row)
    if layout.key_mode == "grid":
        assert layout.key_tile is not None
        per_row = math.prod(
            -(-g // t) for g, t in zip(layout.key_grid, layout.key_tile, strict=True)
        )
        assert layout.num_empty + layout.num_visited == per_row * len(layout.key_tiles)


@st.composite
def tilings(draw, grid: tuple[int, ...], key_grid: tuple[int, ...] | None = None):  # type: ignore[no-untyped-def]
    """Query tile, key tile, key mode and pad: boxes of the grid or row-major token ranges."""
    key_grid = key_grid or grid

    def tile(shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) > 1 and draw(st.booleans()):
            return (draw(st.integers(1, math.prod(shape))),)
        return tuple(draw(st.integers(1, n + 1)) for n in shape)

    mode = draw(st.sampled_from(["grid", "box"]))
    pad = draw(st.sampled_from([1, 2, 4, 16]))
    return tile(grid), (tile(key_grid) if mode == "grid" else None), mode, pad


def classify_and_check(cascade, oracle, tiling, sizes=None, lookups=None, at=None) -> None:  # type: ignore[no-untyped-def]
    mask = attention_mask(cascade)
    dense = mask.evaluate_dense(sizes, None, lookups, at)
    assert torch.equal(dense, oracle), "the cascade's mask differs from the oracle"
    query_tile, key_tile, mode, pad = tiling
    for dense_limit in (0, DENSE_LIMIT):  # interval reasoning alone, and dense group tables
        layout = classify(
            mask, sizes, None, lookups, query_tile, key_tile, key_mode=mode, pad=pad, at=at,
            count_useful=True, dense_limit=dense_limit,
        )  # fmt: skip
        check_layout(layout, dense)


# -- 1-D sequence families ---------------------------------------------------------------

lengths = st.integers(1, 24)
sides = st.one_of(st.none(), st.integers(0, 6))


@given(lengths, lengths, st.sampled_from(["top_left", "bottom_right"]), st.data())
@SETTINGS
def test_causal(p: int, m: int, align: str, data) -> None:
    tiling = data.draw(tilings((p,), (m,)))
    cascade = softmax_attention(causal=align)
    classify_and_check(cascade, causal_mask(p, m, align), tiling, {"P": p, "M": m})


@given(lengths, lengths, sides, sides, st.sampled_from([None, "top_left", "bottom_right"]),
       st.integers(0, 4), st.data())  # fmt: skip
@SETTINGS
def test_sliding_window_and_sinks(p, m, left, right, align, sinks, data) -> None:  # type: ignore[no-untyped-def]
    if left is None and right is None and align is None:
        sinks = 0  # nothing for sinks to widen
    cascade = softmax_attention(causal=align or False, window=(left, right), sinks=sinks)
    oracle = sliding_window_mask(p, m, left, right, align is not None, align or "top_left")
    tiling = data.draw(tilings((p,), (m,)))
    classify_and_check(cascade, sinks_or(oracle, sinks), tiling, {"P": p, "M": m})


@given(st.lists(st.integers(0, 3), min_size=1, max_size=24), st.booleans(), st.booleans(),
       st.data())  # fmt: skip
@SETTINGS
def test_documents(ids, packed, causal, data) -> None:  # type: ignore[no-untyped-def]
    doc = torch.tensor(sorted(ids) if packed else ids)
    n = len(ids)
    oracle = document_mask(doc, doc) & (causal_mask(n, n) if causal else True)
    cascade = softmax_attention(causal=causal, documents=True)
    batch = torch.stack([doc.flip(0), doc])  # batch 1 is the one classified
    classify_and_check(cascade, oracle, data.draw(tilings((n,))), {"P": n, "M": n},
                       {"doc": batch}, {"b": 1})  # fmt: skip


@given(st.integers(1, 24), st.data())
@SETTINGS
def test_prefix_lm(n: int, data) -> None:
    prefix = torch.tensor([data.draw(st.integers(0, n)) for _ in range(2)])
    b = data.draw(st.integers(0, 1))
    cascade = softmax_attention(prefix_lm=True)
    oracle = prefix_lm_mask(n, int(prefix[b]))
    classify_and_check(cascade, oracle, data.draw(tilings((n,))), {"P": n, "M": n},
                       {"prefix": prefix}, {"b": b})  # fmt: skip


# -- grid families -----------------------------------------------------------------------


@st.composite
def natten_configs(draw):  # type: ignore[no-untyped-def]
    ndim = draw(st.integers(1, 3))
    limit = {1: 24, 2: 9, 3: 5}[ndim]
    grid, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(ndim):
        length = draw(st.integers(1, limit))
        d = draw(st.integers(1, max(1, min(3, length))))
        k = draw(st.integers(1, length // d))
        grid.append(length)
        dilation.append(d)
        kernel.append(k)
        stride.append(draw(st.integers(1, k)))
        causal.append(draw(st.booleans()))
    return tuple(grid), tuple(kernel), tuple(stride), tuple(dilation), tuple(causal)


@given(natten_configs(), st.data())
@SETTINGS
def test_neighborhood(config, data) -> None:  # type: ignore[no-untyped-def]
    grid = config[0]
    sizes = {"P": grid[0], "M": grid[0]} if len(grid) == 1 else None
    classify_and_check(neighborhood_attention(*config), natten_mask(*config),
                       data.draw(tilings(grid)), sizes)  # fmt: skip


@given(st.lists(st.integers(1, 9), min_size=1, max_size=2), st.data())
@SETTINGS
def test_halo(grid, data) -> None:  # type: ignore[no-untyped-def]
    grid = tuple(grid)
    block = tuple(data.draw(st.integers(1, n)) for n in grid)
    halo = tuple(data.draw(st.integers(0, 3)) for _ in grid)
    sizes = {"P": grid[0], "M": grid[0]} if len(grid) == 1 else None
    classify_and_check(halo_attention(grid, block, halo), halo_mask(grid, block, halo),
                       data.draw(tilings(grid)), sizes)  # fmt: skip


@given(st.lists(st.sampled_from([(4, 2), (6, 3), (6, 2), (8, 4), (8, 2), (3, 1)]),
                min_size=1, max_size=2),
       st.sampled_from(["block", "grid"]), st.data())  # fmt: skip
@SETTINGS
def test_maxvit(axes, mode, data) -> None:  # type: ignore[no-untyped-def]
    grid, size = tuple(n for n, _ in axes), tuple(s for _, s in axes)
    sizes = {"P": grid[0], "M": grid[0]} if len(grid) == 1 else None
    classify_and_check(maxvit_attention(grid, size, mode), maxvit_mask(grid, size, mode),
                       data.draw(tilings(grid)), sizes)  # fmt: skip


# -- tightness ---------------------------------------------------------------------------


def test_causal_tiles_are_the_lower_triangle() -> None:
    mask = attention_mask(softmax_attention(causal=True))
    layout = classify(mask, {"P": 16, "M": 16}, None, None, (4,), (4,))
    for i, tiles in enumerate(layout.key_tiles):
        assert [t.origin[0] for t in tiles] == [4 * j for j in range(i + 1)]
        assert [t.full for t in tiles] == [True] * i + [False]
    assert (layout.num_full, layout.num_partial, layout.num_empty) == (6, 4, 6)


@pytest.mark.parametrize("grid, kernel", [((12,), (4,)), ((8, 12), (4, 3)), ((8, 8, 8), (4, 4, 4))])
def test_blocked_neighborhood_gives_only_full_tiles(grid, kernel) -> None:  # type: ignore[no-untyped-def]
    mask = attention_mask(neighborhood_attention(grid, kernel, stride=kernel))
    sizes = {"P": grid[0], "M": grid[0]} if len(grid) == 1 else None
    for mode in ("grid", "box"):
        layout = classify(mask, sizes, None, None, kernel, kernel, key_mode=mode, pad=1)
        assert layout.num_partial == 0
        assert all(len(tiles) == 1 for tiles in layout.key_tiles)
        assert layout.computed_elements == math.prod(grid) * math.prod(kernel)


@given(st.integers(7, 40), st.data())
@settings(deadline=None, max_examples=25)
def test_neighborhood_tiles_are_exact(length: int, data) -> None:
    """1-D NA (any stride, causal or not) with tiles of <= 16 queries: every tile is classified
    exactly (per-row splitting makes the window start a number)."""
    kernel = data.draw(st.integers(1, length))
    stride, causal = data.draw(st.integers(1, kernel)), data.draw(st.booleans())
    q_tile, k_tile = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 16))
    mask = attention_mask(neighborhood_attention((length,), kernel, stride, causal=causal))
    dense = mask.evaluate_dense({"P": length, "M": length})
    layout = classify(mask, {"P": length, "M": length}, None, None, (q_tile,), (k_tile,))
    for i, tiles in enumerate(layout.key_tiles):
        queries = layout.query_tokens(i)
        visited = {t.origin: t.full for t in tiles}
        for start in range(0, length, k_tile):
            block = dense[queries][:, start : start + k_tile]
            if bool(block.any()):
                assert visited[(start,)] == bool(block.all())
            else:
                assert (start,) not in visited


def test_two_dimensional_neighborhood_is_exact_with_box_tiles() -> None:
    mask = attention_mask(neighborhood_attention((12, 10), (5, 3), dilation=(1, 2)))
    dense = mask.evaluate_dense()
    layout = classify(mask, None, None, None, (4, 4), (4, 2), count_useful=True)
    check_layout(layout, dense)
    for i, tiles in enumerate(layout.key_tiles):
        queries = layout.query_tokens(i)
        for tile in tiles:
            block = dense[queries][:, layout.key_tokens(tile)]
            assert bool(block.any())
            assert tile.full == bool(block.all())


def test_sinks_are_their_own_small_box() -> None:
    mask = attention_mask(softmax_attention(causal=True, window=(64, 0), sinks=4))
    layout = classify(mask, {"P": 512, "M": 512}, None, None, (64,), key_mode="box", pad=16)
    last = layout.key_tiles[-1]
    assert [(t.origin, t.shape) for t in last] == [((0,), (16,)), ((384,), (128,))]


# -- FlexAttention agreement -------------------------------------------------------------


def test_block_mask_arrays_match_flex_attention() -> None:
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    n, block = 256, 32
    doc = torch.repeat_interleave(torch.arange(5), torch.tensor([40, 60, 16, 100, 40]))
    cases = [
        (softmax_attention(causal=True), {}, lambda b, h, q, k: k <= q),
        (softmax_attention(causal=True, window=(70, 0)), {},
         lambda b, h, q, k: (k <= q) & (k >= q - 70)),
        (softmax_attention(causal=True, documents=True), {"doc": doc[None]},
         lambda b, h, q, k: (k <= q) & (doc[k] == doc[q])),
    ]  # fmt: skip
    for cascade, lookups, mask_mod in cases:
        layout = classify(
            attention_mask(cascade), {"P": n, "M": n}, None, lookups, (block,), (block,)
        )
        ours = layout.to_block_mask_arrays()
        theirs = flex.create_block_mask(mask_mod, 1, 1, n, n, device="cpu", BLOCK_SIZE=block)
        assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks[0, 0])
        assert torch.equal(ours.kv_indices, theirs.kv_indices[0, 0])
        assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks[0, 0])
        assert torch.equal(ours.full_kv_indices, theirs.full_kv_indices[0, 0])


# -- errors and scaling ------------------------------------------------------------------


def test_binding_errors_name_the_missing_piece() -> None:
    documents = attention_mask(softmax_attention(documents=True))
    with pytest.raises(BindError, match="reads 'doc'"):
        documents.evaluate_dense({"P": 4, "M": 4})
    with pytest.raises(BindError, match="at=\\{'b'"):
        documents.evaluate_dense({"P": 4, "M": 4}, None, {"doc": torch.zeros(2, 4)})
    with pytest.raises(BindError, match="size P of query axis 'p'"):
        attention_mask(softmax_attention(causal=True)).evaluate_dense({"M": 4})
    causal = attention_mask(softmax_attention(causal=True))
    with pytest.raises(ValueError, match="needs key_tile"):
        classify(causal, {"P": 4, "M": 4}, None, None, (2,))
    grid = attention_mask(neighborhood_attention((4, 4, 4), 3))
    with pytest.raises(ValueError, match="one extent per axis"):
        classify(grid, None, None, None, (2, 2), (2,))
    with pytest.raises(ValueError, match="key_mode='grid'"):
        classify(grid, None, None, None, (2, 2, 2), key_mode="box").to_block_mask_arrays()


def test_million_token_neighborhood_in_box_mode_is_fast_and_small() -> None:
    """64 x 128 x 128 tokens, 7 x 7 x 7 window: FlexAttention's eager create_block_mask
    tries to allocate 1 TB here."""
    mask = attention_mask(neighborhood_attention((64, 128, 128), 7))
    start = time.perf_counter()
    layout = classify(mask, None, None, None, (4, 4, 8), key_mode="box")
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0, f"{elapsed:.2f} s"
    assert len(layout.key_tiles) == 16 * 32 * 16 and layout.num_visited == 16 * 32 * 16
    interior = layout.key_tiles[(8 * 32 + 16) * 16 + 8][0]
    assert interior.shape == (10, 10, 16)  # 4 + 6 by 4 + 6 by (8 + 6 padded to 16)
    tracemalloc.start()
    classify(mask, None, None, None, (4, 4, 8), key_mode="box")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 256 * 2**20, f"peak {peak / 2**20:.0f} MiB"
