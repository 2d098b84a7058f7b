"""Constant-mask recognition against the oracle masks of tests/oracles/windows.py.

Round trip per family: oracle mask -> recognise -> family and parameters, then the cascade
built from ``builder_kwargs()`` must imply exactly the input mask. The implied mask is read
through the reference executor in float64 with Q = K = 0 (uniform scores over the attended
keys) and V = identity, so ``AV[p, m] > 0`` exactly where query p attends key m.
"""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles.windows import (
    causal_mask,
    document_mask,
    halo_mask,
    maxvit_mask,
    natten_axis_window,
    natten_mask,
    prefix_lm_mask,
    sinks_or,
    sliding_window_mask,
)

from einscade.codegen.reference import reference
from einscade.frontends.mask_structure import (
    halo_axis_mask,
    natten_axis_mask,
    recognise_mask,
    split_bias,
)
from einscade.ir import parse_expr


def implied_mask(structure, rows: int, cols: int) -> torch.Tensor:
    """``[rows, cols]`` bool: which keys each query attends in the built cascade."""
    q = torch.zeros(1, 1, rows, 1, dtype=torch.float64)
    k = torch.zeros(1, 1, cols, 1, dtype=torch.float64)
    v = torch.eye(cols, dtype=torch.float64)[None, None]
    lookups = structure.lookup_tensors()
    out = reference(structure.build(), dtype=torch.float64, Q=q, K=k, V=v, **lookups)
    return out[0, 0] > 0


def assert_round_trip(mask: torch.Tensor, family: str, params: dict, grid=None) -> None:
    structure = recognise_mask(mask, grid=grid)
    assert structure is not None, f"{family} not recognised"
    assert (structure.family, dict(structure.params)) == (family, params)
    assert torch.equal(implied_mask(structure, *mask.shape), mask)
    parse_expr(structure.predicate_text() or "m == m")  # the text is valid IR


DOCS = [0, 0, 0, 1, 1, 2, 2, 2, 2]

SEQUENCE_CASES = {
    "full": (torch.ones(5, 7, dtype=torch.bool), "full", {}),
    "causal": (causal_mask(6, 6), "causal", {"causal": "top_left"}),
    "causal_fewer_queries": (causal_mask(4, 7), "causal", {"causal": "top_left"}),
    "causal_bottom_right": (
        causal_mask(4, 7, "bottom_right"),
        "causal",
        {"causal": "bottom_right"},
    ),
    "causal_bottom_right_empty_rows": (
        causal_mask(7, 4, "bottom_right"),
        "causal",
        {"causal": "bottom_right"},
    ),
    "causal_bottom_right_many_queries": (
        causal_mask(200, 20, "bottom_right"),
        "causal",
        {"causal": "bottom_right"},
    ),
    "decoding_one_query": (
        sliding_window_mask(1, 9, 3, 0, causal=True, align="bottom_right"),
        "causal_window",
        {"causal": "bottom_right", "left": 3},
    ),
    "decoding_with_sinks": (
        sinks_or(sliding_window_mask(1, 12, 2, 0, causal=True, align="bottom_right"), 2),
        "sinks",
        {"causal": "bottom_right", "left": 2, "right": 0, "sinks": 2},
    ),
    # Every query sees the same first keys, and nothing else.
    "prefix_covering_every_query": (
        sinks_or(torch.zeros(3, 7, dtype=torch.bool), 4),
        "prefix_lm",
        {"causal": "top_left", "prefix_len": 4},
    ),
    "window": (sliding_window_mask(8, 8, 2, 1), "sliding_window", {"left": 2, "right": 1}),
    # Edges past every diagonal of the matrix are no edges (canonical form).
    "window_wider_than_mask": (
        sliding_window_mask(6, 6, 5, 5),
        "full",
        {},
    ),
    "window_left_beyond_first_row": (
        sliding_window_mask(6, 6, 5, 1),
        "sliding_window",
        {"left": None, "right": 1},
    ),
    "window_right_beyond_last_key": (
        sliding_window_mask(6, 8, 1, 7),
        "sliding_window",
        {"left": 1, "right": None},
    ),
    "window_left_only": (
        sliding_window_mask(8, 8, 2, None),
        "sliding_window",
        {"left": 2, "right": None},
    ),
    # A non-causal bottom-right window is reported in top-left terms (shift M - P = 4).
    "window_bottom_right": (
        sliding_window_mask(5, 9, 5, 1, align="bottom_right"),
        "sliding_window",
        {"left": 1, "right": 5},
    ),
    "causal_window": (
        sliding_window_mask(9, 9, 3, 0, causal=True),
        "causal_window",
        {"causal": "top_left", "left": 3},
    ),
    "causal_window_bottom_right": (
        sliding_window_mask(5, 9, 3, None, causal=True, align="bottom_right"),
        "causal_window",
        {"causal": "bottom_right", "left": 3},
    ),
    "sinks_causal": (
        sinks_or(sliding_window_mask(12, 12, 3, 0, causal=True), 2),
        "sinks",
        {"causal": "top_left", "left": 3, "right": 0, "sinks": 2},
    ),
    "one_sink": (
        sinks_or(sliding_window_mask(10, 10, 2, 0, causal=True), 1),
        "sinks",
        {"causal": "top_left", "left": 2, "right": 0, "sinks": 1},
    ),
    "sinks_bottom_right": (
        sinks_or(sliding_window_mask(6, 12, 2, 0, causal=True, align="bottom_right"), 3),
        "sinks",
        {"causal": "bottom_right", "left": 2, "right": 0, "sinks": 3},
    ),
    "sinks_two_sided": (
        sinks_or(sliding_window_mask(12, 12, 2, 2), 3),
        "sinks",
        {"causal": False, "left": 2, "right": 2, "sinks": 3},
    ),
    "prefix_lm": (prefix_lm_mask(10, 4), "prefix_lm", {"causal": "top_left", "prefix_len": 4}),
    "documents": (
        document_mask(DOCS, DOCS),
        "documents",
        {"doc_ids": tuple(DOCS), "causal": False},
    ),
    "causal_documents": (
        document_mask(DOCS, DOCS) & causal_mask(9, 9),
        "documents",
        {"doc_ids": tuple(DOCS), "causal": True},
    ),
}


@pytest.mark.parametrize("name", sorted(SEQUENCE_CASES))
def test_sequence_family_round_trip(name):
    mask, family, params = SEQUENCE_CASES[name]
    assert_round_trip(mask, family, params)


def test_bottom_right_window_off_the_diagonal_is_not_recognised():
    # Top-left sides (-2, 5): softmax_attention has no window that misses the diagonal.
    assert recognise_mask(sliding_window_mask(5, 9, 2, 1, align="bottom_right")) is None


def test_predicate_text_reads_like_the_family():
    assert recognise_mask(causal_mask(4, 4)).predicate_text() == "m <= p"
    text = recognise_mask(sinks_or(sliding_window_mask(9, 9, 3, 0, causal=True), 2))
    assert text.predicate_text() == "m <= p and m >= p - 3 or m < 2"
    assert recognise_mask(torch.ones(3, 3, dtype=torch.bool)).predicate_text() == ""


# --------------------------------------------------------------------------------------
# Grid families
# --------------------------------------------------------------------------------------


def natten_params(grid, kernel, stride, dilation, causal) -> dict:
    return {
        "grid": grid,
        "kernel": kernel,
        "stride": stride,
        "dilation": dilation,
        "causal": causal,
    }


GRID_CASES = {
    "natten_2d": (
        (8, 8),
        natten_mask((8, 8), 3),
        "neighborhood",
        natten_params((8, 8), (3, 3), (1, 1), (1, 1), (False, False)),
    ),
    "natten_1d_strided_dilated": (
        (13,),
        natten_mask((13,), 5, 2, 2),
        "neighborhood",
        natten_params((13,), (5,), (2,), (2,), (False,)),
    ),
    "natten_2d_mixed": (
        (7, 9),
        natten_mask((7, 9), (3, 5), (1, 2), (2, 1), (False, True)),
        "neighborhood",
        natten_params((7, 9), (3, 5), (1, 2), (2, 1), (False, True)),
    ),
    "natten_3d_causal_time": (
        (4, 5, 6),
        natten_mask((4, 5, 6), 3, causal=(True, False, False)),
        "neighborhood",
        natten_params((4, 5, 6), (3, 3, 3), (1, 1, 1), (1, 1, 1), (True, False, False)),
    ),
    # L = 10, kernel = stride = 4: the last block shifts inward, so it is NATTEN, not Swin.
    "natten_blocked_ragged": (
        (10,),
        natten_mask((10,), 4, 4),
        "neighborhood",
        natten_params((10,), (4,), (4,), (1,), (False,)),
    ),
    "swin_windows": (
        (8, 8),
        natten_mask((8, 8), 4, 4),
        "blocked",
        {"grid": (8, 8), "window": (4, 4)},
    ),
    "maxvit_block": (
        (6, 8),
        maxvit_mask((6, 8), (3, 2), "block"),
        "blocked",
        {"grid": (6, 8), "window": (3, 2)},
    ),
    "maxvit_grid": (
        (8, 8),
        maxvit_mask((8, 8), 2, "grid"),
        "maxvit_grid",
        {"grid": (8, 8), "size": (2, 2)},
    ),
    "halo": (
        (8, 8),
        halo_mask((8, 8), 4, 1),
        "halo",
        {"grid": (8, 8), "block": (4, 4), "halo": (1, 1)},
    ),
    "halo_mixed": (
        (7, 9),
        halo_mask((7, 9), (3, 4), (1, 2)),
        "halo",
        {"grid": (7, 9), "block": (3, 4), "halo": (1, 2)},
    ),
}


@pytest.mark.parametrize("name", sorted(GRID_CASES))
def test_grid_family_round_trip(name):
    grid, mask, family, params = GRID_CASES[name]
    assert_round_trip(mask, family, params, grid=grid)


@pytest.mark.parametrize("name", ["natten_2d", "natten_2d_mixed", "swin_windows", "halo"])
def test_grid_mask_without_grid_is_not_a_grid_family(name):
    _, mask, _, _ = GRID_CASES[name]
    assert recognise_mask(mask) is None


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_every_natten_mask_is_recognised(data):
    ndim = data.draw(st.integers(1, 2), label="ndim")
    grid = tuple(data.draw(st.integers(2, 9), label=f"L{a}") for a in range(ndim))
    kernel, stride, dilation = [], [], []
    for length in grid:
        d = data.draw(st.integers(1, max(1, length // 2)), label="dilation")
        k = data.draw(st.integers(1, length // d), label="kernel")
        dilation.append(d)
        kernel.append(k)
        stride.append(data.draw(st.integers(1, k), label="stride"))
    causal = tuple(data.draw(st.booleans(), label="causal") for _ in grid)
    mask = natten_mask(grid, tuple(kernel), tuple(stride), tuple(dilation), causal)
    structure = recognise_mask(mask, grid=grid)
    assert structure is not None
    assert torch.equal(implied_mask(structure, *mask.shape), mask)


def test_axis_formulas_match_the_oracle():
    for length in (5, 8, 11):
        for d in range(1, length + 1):
            for k in range(1, length // d + 1):
                for s, c in itertools.product(range(1, k + 1), (False, True)):
                    got = natten_axis_mask(length, k, s, d, c)
                    for x in range(length):
                        want = natten_axis_window(x, length, k, s, d, c)
                        assert got[x].nonzero().flatten().tolist() == want
        for block, halo in itertools.product(range(1, length + 1), range(3)):
            assert torch.equal(
                halo_axis_mask(length, block, halo), halo_mask((length,), block, halo)
            )


# --------------------------------------------------------------------------------------
# Near misses, random masks, input forms
# --------------------------------------------------------------------------------------


def flipped(mask: torch.Tensor, row: int, col: int) -> torch.Tensor:
    out = mask.clone()
    out[row, col] = ~out[row, col]
    return out


@pytest.mark.parametrize("where", [(0, 0), (2, 5), (5, 2), (7, 7), (6, 0)])
def test_one_flipped_element_of_a_causal_mask_is_not_recognised(where):
    assert recognise_mask(flipped(causal_mask(8, 8), *where)) is None


def test_a_flip_that_makes_another_family_is_named_exactly():
    # Hiding key 0 from the last of 8 queries is exactly a causal window of 6 keys back.
    structure = recognise_mask(flipped(causal_mask(8, 8), 7, 0))
    assert (structure.family, structure.param("left")) == ("causal_window", 6)


@pytest.mark.parametrize("where", [(0, 0), (0, 2), (9, 10), (27, 63), (63, 54)])
def test_one_flipped_element_of_a_grid_mask_is_not_recognised(where):
    for mask in (natten_mask((8, 8), 3), halo_mask((8, 8), 4, 1), natten_mask((8, 8), 4, 4)):
        assert recognise_mask(flipped(mask, *where), grid=(8, 8)) is None


def test_one_flipped_element_of_documents_or_sinks_is_not_recognised():
    assert recognise_mask(flipped(document_mask(DOCS, DOCS), 4, 2)) is None
    assert recognise_mask(flipped(prefix_lm_mask(10, 4), 9, 3)) is None
    assert recognise_mask(flipped(sinks_or(causal_mask(10, 10), 2), 5, 0)) is None


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_are_not_recognised(seed):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(16, 16, generator=gen) < 0.9
    assert recognise_mask(dense, grid=(4, 4)) is None
    assert recognise_mask(torch.rand(12, 20, generator=gen) < 0.5) is None
    assert recognise_mask(causal_mask(16, 16) & dense, grid=(4, 4)) is None


def test_leading_broadcast_dims_are_stripped():
    mask = causal_mask(5, 5)
    assert recognise_mask(mask[None, None]).family == "causal"
    assert recognise_mask(mask.expand(2, 3, 5, 5)).family == "causal"
    differ = torch.stack([mask, sliding_window_mask(5, 5, 1, 0, causal=True)])
    assert recognise_mask(differ) is None


@pytest.mark.parametrize("masked", [-math.inf, -1e9, -1e4])
def test_additive_float_masks(masked):
    mask = sliding_window_mask(8, 8, 2, 0, causal=True)
    additive = torch.zeros(1, 1, 8, 8).masked_fill(~mask, masked)
    structure = recognise_mask(additive)
    assert (structure.family, structure.param("left")) == ("causal_window", 2)


def test_a_float_bias_is_not_a_mask():
    bias = torch.zeros(6, 6).masked_fill(~causal_mask(6, 6), -math.inf)
    bias[3, 1] = 0.25
    assert recognise_mask(bias) is None
    assert recognise_mask(torch.full((4, 4), -100.0).tril()) is None  # -100 is a bias here
    assert recognise_mask(torch.ones(4, 4, dtype=torch.int64)) is None


def test_split_bias_separates_mask_and_bias():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(2, 16, 16, generator=gen)
    window = natten_mask((4, 4), 2, 2)
    additive = table.masked_fill(~window, -math.inf)
    attend, bias = split_bias(additive)
    assert torch.equal(attend, window.expand(2, 16, 16))
    assert torch.equal(bias, table * window)
    assert recognise_mask(attend, grid=(4, 4)).family == "blocked"


def test_split_bias_without_bias_and_swin_threshold():
    mask_only = torch.zeros(4, 4).masked_fill(~causal_mask(4, 4), -1e9)
    attend, bias = split_bias(mask_only)
    assert torch.equal(attend, causal_mask(4, 4)) and bias is None
    flag = torch.ones(3, 3, dtype=torch.bool)
    assert split_bias(flag) == (flag, None)
    swin = torch.zeros(4, 4).masked_fill(~causal_mask(4, 4), -100.0) + 0.01
    attend, bias = split_bias(swin, masked_at=-50.0)
    assert torch.equal(attend, causal_mask(4, 4))
    assert torch.equal(bias, torch.full((4, 4), 0.01) * causal_mask(4, 4))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="NaN|nan"):
        split_bias(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="grid"):
        recognise_mask(causal_mask(6, 6), grid=(2, 2))
    with pytest.raises(ValueError, match="P, M"):
        recognise_mask(torch.ones(4, dtype=torch.bool))


# --------------------------------------------------------------------------------------
# Speed: a 56 x 56 grid (3136 tokens)
# --------------------------------------------------------------------------------------


def axis_oracle(length: int, kernel: int, stride: int = 1) -> torch.Tensor:
    out = torch.zeros(length, length, dtype=torch.bool)
    for x in range(length):
        out[x, natten_axis_window(x, length, kernel, stride)] = True
    return out


@pytest.mark.parametrize("stride, family", [(1, "neighborhood"), (7, "blocked")])
def test_recognising_a_3136_token_mask_is_fast(stride, family):
    axis = axis_oracle(56, 7, stride)
    mask = (axis[:, None, :, None] & axis[None, :, None, :]).reshape(3136, 3136)
    # One intra-op thread: with the second core busy (other test processes), a parallel
    # region waits on a descheduled worker and the timing measures the neighbours instead.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            structure = recognise_mask(mask, grid=(56, 56))
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert structure.family == family
    assert min(seconds) < 1.0, f"{min(seconds):.3f} s"
