"""Self-checks of the oracles against hand-computed examples, properties stated in
neighborhood.md, and torch's SDPA. Expected values here are written out by hand."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from .attention import (
    causal_linear_attention_loop,
    feature_map_fn,
    linear_attention_dense,
    masked_softmax_attention,
)
from .windows import (
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

HYP = settings(max_examples=150, deadline=None)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# --------------------------------------------------------------------------------------
# natten_axis_window: hand-computed examples
# --------------------------------------------------------------------------------------


def test_blocked_window_starts_from_doc():
    # neighborhood.md: L=10, k=s=4 gives window starts 0,0,0,0,4,4,4,4,6,6.
    starts = [natten_axis_window(x, 10, 4, 4)[0] for x in range(10)]
    assert starts == [0, 0, 0, 0, 4, 4, 4, 4, 6, 6]
    assert natten_axis_window(9, 10, 4, 4) == [6, 7, 8, 9]
    assert natten_axis_window(5, 10, 4, 4) == [4, 5, 6, 7]


def test_neighborhood_odd_kernel_shifts_at_borders():
    L, k = 5, 3
    expected = [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    assert [natten_axis_window(x, L, k) for x in range(L)] == expected


def test_neighborhood_even_kernel_one_more_on_the_left():
    L, k = 6, 4
    expected = [
        [0, 1, 2, 3],
        [0, 1, 2, 3],
        [0, 1, 2, 3],
        [1, 2, 3, 4],  # interior: 2 left, 1 right
        [2, 3, 4, 5],
        [2, 3, 4, 5],
    ]
    assert [natten_axis_window(x, L, k) for x in range(L)] == expected


def test_strided_window_hand_example():
    # L=8, k=3, s=2: stride groups {0,1},{2,3},{4,5},{6,7}; leader = group start + 1.
    expected = [
        [0, 1, 2],
        [0, 1, 2],
        [2, 3, 4],
        [2, 3, 4],
        [4, 5, 6],
        [4, 5, 6],
        [5, 6, 7],  # leader 7 = L-1 -> shifted inward
        [5, 6, 7],
    ]
    assert [natten_axis_window(x, 8, 3, 2) for x in range(8)] == expected


def test_dilated_window_hand_example():
    # L=7, k=3, d=2: group 0 = {0,2,4,6} (L_g=4), group 1 = {1,3,5} (L_g=3).
    assert natten_axis_window(0, 7, 3, 1, 2) == [0, 2, 4]
    assert natten_axis_window(2, 7, 3, 1, 2) == [0, 2, 4]
    assert natten_axis_window(4, 7, 3, 1, 2) == [2, 4, 6]
    assert natten_axis_window(6, 7, 3, 1, 2) == [2, 4, 6]
    assert natten_axis_window(1, 7, 3, 1, 2) == [1, 3, 5]
    assert natten_axis_window(3, 7, 3, 1, 2) == [1, 3, 5]
    assert natten_axis_window(5, 7, 3, 1, 2) == [1, 3, 5]


def test_causal_window_hand_examples():
    assert [natten_axis_window(x, 5, 3, causal=True) for x in range(5)] == [
        [0],
        [0, 1],
        [0, 1, 2],
        [1, 2, 3],
        [2, 3, 4],
    ]
    # stride 2: leader = last query of the stride group; window [leader-k+1, i].
    assert [natten_axis_window(x, 6, 3, 2, causal=True) for x in range(6)] == [
        [0],
        [0, 1],
        [1, 2],
        [1, 2, 3],
        [3, 4],
        [3, 4, 5],
    ]
    # causal + dilation: L=6, k=2, d=2 -> groups {0,2,4}, {1,3,5}
    assert [natten_axis_window(x, 6, 2, 1, 2, causal=True) for x in range(6)] == [
        [0],
        [1],
        [0, 2],
        [1, 3],
        [2, 4],
        [3, 5],
    ]


# --------------------------------------------------------------------------------------
# natten_axis_window: properties from neighborhood.md
# --------------------------------------------------------------------------------------


@st.composite
def _axis_params(draw, max_len=24):
    L = draw(st.integers(1, max_len))
    d = draw(st.integers(1, L))
    k = draw(st.integers(1, L // d))
    s = draw(st.integers(1, k))
    return L, k, s, d


@HYP
@given(_axis_params())
def test_noncausal_window_has_exactly_k_keys(params):
    L, k, s, d = params
    for x in range(L):
        w = natten_axis_window(x, L, k, s, d)
        assert len(w) == k
        assert all(xk % d == x % d for xk in w)  # same dilation group
        assert x in w  # s <= k: the query is always inside its window
        idx = [xk // d for xk in w]
        assert idx == list(range(idx[0], idx[0] + k))  # contiguous within the group


@HYP
@given(_axis_params())
def test_noncausal_window_equals_clamped_center_form(params):
    # Equivalent form: the window is [c - w_left, c + w_right] (in group coordinates) with
    # c = leader clamped to [w_left, L_g - 1 - w_right].
    L, k, s, d = params
    wl, wr = k // 2, k - 1 - k // 2
    for x in range(L):
        g, i = x % d, x // d
        L_g = len(range(g, L, d))
        leader = min((i // s) * s + s // 2, L_g - 1)
        c = min(max(leader, wl), L_g - 1 - wr)
        expected = [j * d + g for j in range(c - wl, c + wr + 1)]
        assert natten_axis_window(x, L, k, s, d) == expected


@HYP
@given(_axis_params())
def test_queries_in_same_stride_group_share_window(params):
    L, k, s, d = params
    for causal in (False, True):
        for x in range(L):
            w = natten_axis_window(x, L, k, s, d, causal)
            # non-causal: whole stride group shares the window; causal: window start shared
            leader_x = x - ((x // d) % s) * d  # first query of x's stride group
            w0 = natten_axis_window(leader_x, L, k, s, d, causal)
            if causal:
                assert w[0] == w0[0]
            else:
                assert w == w0


@HYP
@given(_axis_params())
def test_causal_window_no_future_at_most_k(params):
    L, k, s, d = params
    for x in range(L):
        w = natten_axis_window(x, L, k, s, d, causal=True)
        assert 1 <= len(w) <= k
        assert all(xk <= x for xk in w)
        assert x in w
        assert all(xk % d == x % d for xk in w)
        if s == 1:
            # plain causal neighborhood: the k most recent keys of the group
            i = x // d
            assert w == [j * d + x % d for j in range(max(0, i - k + 1), i + 1)]


@HYP
@given(st.integers(1, 6), st.integers(1, 5))
def test_blocked_divisible_is_block_diagonal(k, nblocks):
    L = k * nblocks
    expected = torch.block_diag(*[torch.ones(k, k, dtype=torch.bool)] * nblocks)
    assert torch.equal(natten_mask((L,), k, k), expected)


def test_blocked_2d_is_block_diagonal_per_axis_and_matches_maxvit_block():
    grid, kernel = (4, 6), (2, 3)
    m = natten_mask(grid, kernel, kernel)
    coords = list(itertools.product(range(4), range(6)))
    for q, (a, b) in enumerate(coords):
        for j, (c, e) in enumerate(coords):
            assert m[q, j] == (a // 2 == c // 2 and b // 3 == e // 3)
    assert torch.equal(m, maxvit_mask(grid, kernel, "block"))


def test_kernel_equal_length_is_full_attention():
    assert natten_mask((3, 5), (3, 5)).all()
    assert natten_mask((2, 3, 4), (2, 3, 4), stride=(1, 2, 3)).all()
    # causal with k = L on a 1-D axis is the plain causal mask
    assert torch.equal(natten_mask((7,), 7, causal=True), causal_mask(7, 7))


def test_dilation_splits_groups():
    # L=8, d=2, k=4: each dilation group has 4 tokens -> full attention within the group.
    m = natten_mask((8,), 4, dilation=2)
    expected = _t([[q % 2 == j % 2 for j in range(8)] for q in range(8)])
    assert torch.equal(m, expected)
    # MaxViT grid attention == dilated blocked attention with dilation L // size.
    assert torch.equal(maxvit_mask((8,), 4, "grid"), m)
    assert torch.equal(
        maxvit_mask((6, 8), (3, 2), "grid"), natten_mask((6, 8), (3, 2), dilation=(2, 4))
    )


def _natten_1d_mask(L, k, s, d, causal):
    m = torch.zeros(L, L, dtype=torch.bool)
    for x in range(L):
        for xk in natten_axis_window(x, L, k, s, d, causal):
            m[x, xk] = True
    return m


@settings(max_examples=40, deadline=None)
@given(_axis_params(max_len=6), _axis_params(max_len=5), st.booleans(), st.booleans())
def test_natten_mask_is_product_of_axes(p0, p1, c0, c1):
    (L0, k0, s0, d0), (L1, k1, s1, d1) = p0, p1
    m = natten_mask((L0, L1), (k0, k1), (s0, s1), (d0, d1), (c0, c1))
    a0 = _natten_1d_mask(L0, k0, s0, d0, c0)
    a1 = _natten_1d_mask(L1, k1, s1, d1, c1)
    expected = (a0[:, None, :, None] & a1[None, :, None, :]).reshape(L0 * L1, L0 * L1)
    assert torch.equal(m, expected)
    if not (c0 or c1):
        assert (m.sum(-1) == k0 * k1).all()


def test_natten_mask_2d_hand_example():
    # k=3 on a 3x4 grid: query (0, 0) sees rows 0..2, cols 0..2 (window shifted inward).
    m = natten_mask((3, 4), 3)
    row = m[0].reshape(3, 4)
    assert torch.equal(row, _t([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]]))
    row = m[1 * 4 + 3].reshape(3, 4)  # query (1, 3)
    assert torch.equal(row, _t([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]))


# --------------------------------------------------------------------------------------
# HaloNet, MaxViT, 1-D masks
# --------------------------------------------------------------------------------------


def test_halo_mask_hand_example():
    m = halo_mask((8,), 4, 1)
    expected = _t([[j < 5 for j in range(8)]] * 4 + [[j >= 3 for j in range(8)]] * 4)
    assert torch.equal(m, expected)
    # halo 0 = plain blocks
    assert torch.equal(halo_mask((6,), 3, 0), natten_mask((6,), 3, 3))
    # 2-D: query (0, 0) of a 4x4 grid, block 2, halo 1 -> rows/cols 0..2
    row = halo_mask((4, 4), 2, 1)[0].reshape(4, 4)
    assert torch.equal(row, _t([[1, 1, 1, 0]] * 3 + [[0, 0, 0, 0]]))


def test_maxvit_hand_examples():
    blk = maxvit_mask((4, 4), 2, "block")[0].reshape(4, 4)
    assert torch.equal(blk, _t([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    grd = maxvit_mask((4, 4), 2, "grid")[0].reshape(4, 4)
    assert torch.equal(grd, _t([[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]))
    # each token sees size*size tokens in both modes
    assert (maxvit_mask((6, 4), (3, 2), "grid").sum(-1) == 6).all()
    assert (maxvit_mask((6, 4), (3, 2), "block").sum(-1) == 6).all()
    with pytest.raises(ValueError):
        maxvit_mask((5, 4), 2, "block")


def test_causal_mask_alignment():
    assert torch.equal(causal_mask(3, 3), _t([[1, 0, 0], [1, 1, 0], [1, 1, 1]]))
    assert torch.equal(causal_mask(2, 4, "top_left"), _t([[1, 0, 0, 0], [1, 1, 0, 0]]))
    assert torch.equal(causal_mask(2, 4, "bottom_right"), _t([[1, 1, 1, 0], [1, 1, 1, 1]]))
    assert torch.equal(causal_mask(3, 2, "bottom_right"), _t([[0, 0], [1, 0], [1, 1]]))
    # torch's own definitions (tril for top-left)
    assert torch.equal(causal_mask(4, 6), torch.ones(4, 6, dtype=torch.bool).tril())
    assert torch.equal(causal_mask(4, 6, "bottom_right"), torch.ones(4, 6).tril(2).bool())


def test_sliding_window_hand_examples():
    band = _t(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(sliding_window_mask(5, 5, 1, 1), band)
    assert torch.equal(sliding_window_mask(5, 5, 1, 1, causal=True), band.tril())
    assert torch.equal(sliding_window_mask(5, 5, 1, 0), band.tril())
    assert torch.equal(
        sliding_window_mask(2, 5, 1, None, causal=True, align="bottom_right"),
        _t([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]),
    )
    # unbounded both sides + causal = causal
    assert torch.equal(sliding_window_mask(4, 6, None, -1, causal=True), causal_mask(4, 6))
    assert sliding_window_mask(3, 4, None, None).all()


def test_sinks_document_prefix():
    swa = sliding_window_mask(5, 5, 1, 0)
    assert torch.equal(
        sinks_or(swa, 1),
        _t(
            [
                [1, 0, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 0, 0],
                [1, 0, 1, 1, 0],
                [1, 0, 0, 1, 1],
            ]
        ),
    )
    assert not swa[4, 0]  # sinks_or does not modify its input
    assert torch.equal(
        document_mask([0, 0, 1, 1, 1], [0, 0, 1, 1, 1]),
        torch.block_diag(torch.ones(2, 2), torch.ones(3, 3)).bool(),
    )
    assert torch.equal(document_mask(torch.tensor([1, 2]), [2, 1, 1]), _t([[0, 1, 1], [1, 0, 0]]))
    assert torch.equal(
        prefix_lm_mask(4, 2), _t([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    )
    assert torch.equal(prefix_lm_mask(3, 0), causal_mask(3, 3))


# --------------------------------------------------------------------------------------
# masked_softmax_attention
# --------------------------------------------------------------------------------------


def _qkv(B=2, Hq=4, Hkv=4, P=7, M=9, D=8, Dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    Dv = D if Dv is None else Dv
    q = torch.randn(B, Hq, P, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, M, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, M, Dv, generator=g, dtype=torch.float64)
    return q, k, v


def test_attention_hand_example():
    # zero queries -> uniform weights over the attended keys
    q = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    k = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    v = torch.tensor([[[[1.0], [2.0], [6.0]]]], dtype=torch.float64)
    mask = _t([[1, 1, 0], [1, 1, 1]])
    out = masked_softmax_attention(q, k, v, mask)
    assert torch.allclose(out.flatten(), torch.tensor([1.5, 3.0], dtype=torch.float64))
    # two keys, explicit softmax
    q = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0], [0.0]]]], dtype=torch.float64)
    out, lse = masked_softmax_attention(q, k, v, scale=1.0, return_lse=True)
    e = torch.exp(torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(out.flatten(), (e / (e + 1)).reshape(1))
    assert torch.allclose(lse.flatten(), torch.log(e + 1).reshape(1))


def test_attention_matches_sdpa_no_mask_and_scale():
    q, k, v = _qkv(Dv=5)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(masked_softmax_attention(q, k, v), ref, atol=1e-12, rtol=1e-10)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert torch.allclose(masked_softmax_attention(q, k, v, scale=0.3), ref, atol=1e-12)


def test_attention_matches_sdpa_bool_mask():
    q, k, v = _qkv(P=9, M=9)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 4, 9, 9, generator=g) < 0.4
    mask |= torch.eye(9, dtype=torch.bool)  # no fully masked rows
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(masked_softmax_attention(q, k, v, mask), ref, atol=1e-12)
    # a NATTEN mask on a 3x3 grid, broadcast over batch and heads
    nm = natten_mask((3, 3), 2, 1, 1)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=nm)
    assert torch.allclose(masked_softmax_attention(q, k, v, nm), ref, atol=1e-12)
    # causal (top-left) vs is_causal
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(masked_softmax_attention(q, k, v, causal_mask(9, 9)), ref, atol=1e-12)


def test_attention_matches_sdpa_gqa():
    q, k, v = _qkv(Hq=6, Hkv=2, P=5, M=7, Dv=3)
    mask = causal_mask(5, 7, "bottom_right")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert torch.allclose(masked_softmax_attention(q, k, v, mask), ref, atol=1e-12)
    # GQA convention: query head h uses kv head h // (Hq // Hkv)
    out = masked_softmax_attention(q[:, 4:5], k[:, 1:2], v[:, 1:2], mask)  # 4 // 3 == 1
    assert torch.allclose(masked_softmax_attention(q, k, v, mask)[:, 4:5], out, atol=1e-12)


def test_attention_matches_sdpa_float_bias():
    q, k, v = _qkv(P=6, M=6)
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(1, 4, 6, 6, generator=g, dtype=torch.float64)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.allclose(masked_softmax_attention(q, k, v, bias=bias), ref, atol=1e-12)
    # bias with -inf acts as a mask
    m = sliding_window_mask(6, 6, 2, 0)
    neg = torch.zeros(6, 6, dtype=torch.float64).masked_fill(~m, float("-inf"))
    assert torch.allclose(
        masked_softmax_attention(q, k, v, bias=neg), masked_softmax_attention(q, k, v, m)
    )


def test_fully_masked_row_is_zero():
    q, k, v = _qkv(B=1, Hq=2, Hkv=2, P=3, M=4)
    mask = _t([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    out, lse = masked_softmax_attention(q, k, v, mask, return_lse=True)
    assert not torch.isnan(out).any()
    assert (out[:, :, 1] == 0).all()
    assert torch.isneginf(lse[:, :, 1]).all()
    # other rows unaffected
    ref = F.scaled_dot_product_attention(q[:, :, [0, 2]], k, v, attn_mask=mask[[0, 2]])
    assert torch.allclose(out[:, :, [0, 2]], ref, atol=1e-12)
    # causal bottom-right with P > M: first rows are empty
    q2, k2, v2 = _qkv(B=1, Hq=1, Hkv=1, P=4, M=2)
    out2 = masked_softmax_attention(q2, k2, v2, causal_mask(4, 2, "bottom_right"))
    assert (out2[:, :, :2] == 0).all() and not torch.isnan(out2).any()
    # everything -inf through the bias also gives 0
    out3 = masked_softmax_attention(q2, k2, v2, bias=torch.full((4, 2), float("-inf")))
    assert (out3 == 0).all()


def test_softcap_and_dtype():
    q, k, v = _qkv(B=1, Hq=2, Hkv=2, P=4, M=5)
    cap, scale = 1.5, 0.7
    s = cap * torch.tanh((q @ k.transpose(-1, -2)) * scale / cap)
    ref = torch.softmax(s, dim=-1) @ v
    out = masked_softmax_attention(q, k, v, scale=scale, softcap=cap)
    assert torch.allclose(out, ref, atol=1e-12)
    # huge cap = no cap
    big = masked_softmax_attention(q, k, v, softcap=1e9)
    assert torch.allclose(big, masked_softmax_attention(q, k, v), atol=1e-9)
    # output dtype follows q unless asked otherwise
    out32 = masked_softmax_attention(q.float(), k.float(), v.float())
    assert out32.dtype == torch.float32
    out64 = masked_softmax_attention(q.float(), k.float(), v.float(), out_dtype=torch.float64)
    assert out64.dtype == torch.float64


# --------------------------------------------------------------------------------------
# Linear attention
# --------------------------------------------------------------------------------------


def _causal_linear_dense_inline(q, k, v, feature_map):
    phi = feature_map_fn(feature_map)
    A = phi(q.double()) @ phi(k.double()).transpose(-1, -2)
    N = A.shape[-1]
    A = A * torch.ones(N, N, dtype=torch.float64).tril()
    return (A @ v.double()) / A.sum(-1, keepdim=True)


@pytest.mark.parametrize("feature_map", ["elu+1", "relu", "identity"])
def test_causal_linear_loop_equals_masked_dense(feature_map):
    q, k, v = _qkv(B=2, Hq=3, Hkv=3, P=11, M=11, D=4, Dv=5, seed=3)
    if feature_map != "elu+1":
        # keep the denominators away from zero
        q, k = q.abs() + 0.1, k.abs() + 0.1
    loop = causal_linear_attention_loop(q, k, v, feature_map)
    ref = _causal_linear_dense_inline(q, k, v, feature_map)
    assert torch.allclose(loop, ref, atol=1e-12, rtol=1e-10)
    # the last causal step sees every key: equals the non-causal result there
    dense = linear_attention_dense(q, k, v, feature_map)
    assert torch.allclose(loop[:, :, -1], dense[:, :, -1], atol=1e-12, rtol=1e-10)


def test_linear_attention_hand_example():
    # identity map, D=1, q=k=1: causal output is the running mean of v
    ones = torch.ones(1, 1, 3, 1, dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64).reshape(1, 1, 3, 1)
    loop = causal_linear_attention_loop(ones, ones, v, "identity")
    assert torch.allclose(loop.flatten(), torch.tensor([1.0, 1.5, 3.0], dtype=torch.float64))
    dense = linear_attention_dense(ones, ones, v, "identity")
    assert torch.allclose(dense.flatten(), torch.full((3,), 3.0, dtype=torch.float64))
    # elu+1 of 0 is 1; relu keeps positives
    x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    assert torch.allclose(
        feature_map_fn("elu+1")(x), torch.tensor([torch.e**-1, 1.0, 3.0], dtype=torch.float64)
    )
    assert torch.equal(feature_map_fn("relu")(x), torch.tensor([0.0, 0.0, 2.0]).double())


def test_linear_attention_gqa_and_cross_lengths():
    q, k, v = _qkv(B=1, Hq=4, Hkv=2, P=3, M=6, D=4, seed=5)
    out = linear_attention_dense(q, k, v, "elu+1")
    ref = linear_attention_dense(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), "elu+1"
    )
    assert out.shape == (1, 4, 3, 4)
    assert torch.allclose(out, ref)
    q, k, v = _qkv(B=1, Hq=4, Hkv=2, P=6, M=6, D=4, seed=6)
    loop = causal_linear_attention_loop(q, k, v, "elu+1")
    ref = causal_linear_attention_loop(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), "elu+1"
    )
    assert torch.allclose(loop, ref)
