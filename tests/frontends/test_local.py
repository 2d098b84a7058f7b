"""Local attention builders (NATTEN, HaloNet, MaxViT) against the brute-force oracles.

Two checks per pattern, both through the reference executor in float64:
- the mask the cascade implies, read off exactly with Q = K = 0 (uniform scores over the
  attended keys) and V = one-hot rows (AV[p, m] > 0 iff query p attends key m);
- the full attention output on random inputs against ``masked_softmax_attention``.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles.attention import masked_softmax_attention
from oracles.windows import halo_mask, maxvit_mask, natten_mask

from einscade.codegen.reference import reference
from einscade.frontends.local import (
    halo_attention,
    maxvit_attention,
    neighborhood_attention,
    window_attention,
)
from einscade.ir import Einsum, parse, print_cascade, print_expr


def implied_mask(cascade, n: int) -> torch.Tensor:
    """``[n, n]`` bool: which keys each query attends, as the cascade computes it."""
    zeros = torch.zeros(1, 1, n, 1, dtype=torch.float64)
    one_hot = torch.eye(n, dtype=torch.float64)[None, None]
    return reference(cascade, dtype=torch.float64, Q=zeros, K=zeros, V=one_hot)[0, 0] > 0


def assert_matches_oracle(cascade, mask: torch.Tensor, scale: float | None = None) -> None:
    """Exact mask, then the attention output on random inputs, against the oracle."""
    n = mask.shape[0]
    assert torch.equal(implied_mask(cascade, n), mask)
    gen = torch.Generator().manual_seed(n)
    q, k = (torch.randn(1, 2, n, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 2, n, 3, generator=gen, dtype=torch.float64)
    extra = {} if scale is None else {"scale": scale}
    got = reference(cascade, dtype=torch.float64, Q=q, K=k, V=v, **extra)
    want = masked_softmax_attention(q, k, v, mask=mask, scale=scale)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def qk_statement(cascade) -> Einsum:
    return next(s for s in cascade.einsums() if s.target == "QK")


BUILT = {
    "natten_1d_dilated_strided": lambda: neighborhood_attention((13,), 5, 2, 2),
    "natten_2d_mixed": lambda: neighborhood_attention(
        (7, 9), (3, 5), (1, 2), (2, 1), (False, True)
    ),
    "natten_3d": lambda: neighborhood_attention((4, 5, 6), 3, causal=(True, False, False)),
    "natten_scaled": lambda: neighborhood_attention((8,), 3, scale=0.5),
    "halo": lambda: halo_attention((8, 8), 4, 1),
    "maxvit_grid": lambda: maxvit_attention((8, 8), 2, "grid"),
    "window_shifted": lambda: window_attention((8, 8), 4, 2),
}


# --------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILT))
def test_round_trip(name):
    cascade = BUILT[name]()
    assert parse(print_cascade(cascade)) == cascade
    family = {"natten": "neighborhood", "halo": "halo", "maxvit": "maxvit", "window": "window"}[
        name.split("_")[0]
    ]
    assert cascade.name == f"{family}_attention"


@pytest.mark.parametrize("name", sorted(BUILT))
def test_softmax_tail_is_shared(name):
    cascade = BUILT[name]()
    targets = [s.target for s in cascade.einsums()]
    assert targets == ["QK", "GM", "SN", "SD", "A", "AV"]
    assert cascade.outputs == ("AV",)
    assert [s.predicate is not None for s in cascade.einsums()] == [True] + [False] * 5


def test_plain_neighborhood_prints_without_trivial_terms():
    cascade = neighborhood_attention((13,), 5)
    assert [(let.name, print_expr(let.value)) for let in cascade.lets] == [
        ("start", "max(p - 2, 0) + min(P - p - 3, 0)")
    ]
    assert print_expr(qk_statement(cascade).predicate) == "start <= m and m < start + 5"
    assert cascade.sizes == () and cascade.grids == ()


def test_causal_neighborhood_drops_the_end_clamp():
    cascade = neighborhood_attention((13,), 5, causal=True)
    assert [print_expr(let.value) for let in cascade.lets] == ["max(p - 4, 0)"]
    assert print_expr(qk_statement(cascade).predicate) == "start <= m and m <= p"


def test_dilation_and_stride_get_named_terms():
    text = print_cascade(neighborhood_attention((7, 9), (3, 5), (1, 2), (2, 1)))
    assert "let group_x = px % 2" in text
    assert "let glen_x = (PX - group_x + 1) // 2" in text
    assert "let lead_y = min(py // 2 * 2 + 1, PY - 1)" in text
    assert "% 1" not in text and "// 1" not in text
    assert "size MX = PX" in text and "grid m = (mx, my)" in text


def test_default_scale_is_one_over_sqrt_e():
    (param,) = neighborhood_attention((8,), 3).params
    assert (param.name, param.kind, print_expr(param.default)) == ("scale", "float", "1 / sqrt(E)")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: neighborhood_attention((8,), 5, dilation=2), "kernel 5 * dilation 2"),
        (lambda: neighborhood_attention((8,), 3, stride=4), "stride 4 exceeds kernel 3"),
        (lambda: neighborhood_attention((8, 8), (3, 3, 3)), "kernel has 3 entries"),
        (lambda: neighborhood_attention((2, 2, 2, 2), 1), "1, 2 or 3 axes"),
        (lambda: neighborhood_attention((8,), 0), "kernel must be an int >= 1"),
        (lambda: neighborhood_attention((8,), 3, causal=1), "causal must be a bool"),
        (lambda: halo_attention((8,), 4, -1), "halo must be an int >= 0"),
        (lambda: maxvit_attention((8, 6), 4, "block"), "axis 1 (length 6) is not divisible"),
        (lambda: maxvit_attention((8,), 4, "swin"), "mode must be 'block' or 'grid'"),
    ],
)
def test_bad_arguments_name_the_problem(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


# --------------------------------------------------------------------------------------
# Semantics against the oracles
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2, 5])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_natten_1d(stride, dilation, causal):
    cascade = neighborhood_attention((13,), 5, stride, dilation, causal)
    assert_matches_oracle(cascade, natten_mask((13,), 5, stride, dilation, causal))


def test_natten_2d_mixed_axes():
    args = ((7, 9), (3, 5), (1, 2), (2, 1), (False, True))
    assert_matches_oracle(neighborhood_attention(*args), natten_mask(*args))


def test_natten_3d():
    args = ((4, 5, 6), (3, 2, 4), (2, 1, 3), (1, 2, 1), (True, False, False))
    assert_matches_oracle(neighborhood_attention(*args), natten_mask(*args))


def test_blocked_with_ragged_last_block_overlaps():
    # neighborhood.md: L=10, k=s=4 gives window starts 0,0,0,0,4,4,4,4,6,6.
    assert_matches_oracle(neighborhood_attention((10,), 4, 4), natten_mask((10,), 4, 4))


def test_1d_cascade_is_length_generic():
    # The 1-D cascade reads its length from Q, so one built for 13 tokens serves 16.
    cascade = neighborhood_attention((13,), 5, 2, 2)
    assert_matches_oracle(cascade, natten_mask((16,), 5, 2, 2))


def test_scale_default_and_override():
    cascade = neighborhood_attention((8,), 3, scale=0.5)
    assert_matches_oracle(cascade, natten_mask((8,), 3), scale=0.5)
    assert_matches_oracle(cascade, natten_mask((8,), 3), scale=0.3)


@pytest.mark.parametrize(("grid", "block", "halo"), [((8, 8), 4, 1), ((7, 10), (3, 4), (2, 0))])
def test_halo(grid, block, halo):
    assert_matches_oracle(halo_attention(grid, block, halo), halo_mask(grid, block, halo))


@pytest.mark.parametrize(("mode", "size"), [("block", 4), ("grid", 2), ("grid", (4, 2))])
def test_maxvit(mode, size):
    cascade = maxvit_attention((8, 8), size, mode)
    assert_matches_oracle(cascade, maxvit_mask((8, 8), size, mode))


@st.composite
def natten_configs(draw):
    """A 1-D or 2-D grid and per-axis NATTEN parameters that NATTEN accepts."""
    ndim = draw(st.integers(1, 2))
    grid, kernel, stride, dilation, causal = [], [], [], [], []
    for _ in range(ndim):
        length = draw(st.integers(1, 12 if ndim == 1 else 6))
        k = draw(st.integers(1, length))
        grid.append(length)
        kernel.append(k)
        dilation.append(draw(st.integers(1, length // k)))
        stride.append(draw(st.integers(1, k)))
        causal.append(draw(st.booleans()))
    return tuple(grid), tuple(kernel), tuple(stride), tuple(dilation), tuple(causal)


@settings(max_examples=30, deadline=None)
@given(natten_configs())
def test_natten_sweep(config):
    assert_matches_oracle(neighborhood_attention(*config), natten_mask(*config))


# --------------------------------------------------------------------------------------
# Swin windows on the original grid
# --------------------------------------------------------------------------------------


def swin_per_window(q, k, v, table, grid, window, shift):
    """Swin's own computation, step by step: roll the [B, H, N, D] tokens by -shift, cut
    windows, attend inside each window with the bias ``table[h, i, j]`` plus Swin's region
    mask (-100 between regions of the rolled grid), put the windows back, roll back."""
    (hh, ww), (wh, wW), (sy, sx) = grid, window, shift
    batch, heads = q.shape[:2]

    def partition(x):
        x = x.reshape(batch, heads, hh, ww, -1).roll((-sy, -sx), dims=(2, 3))
        x = x.reshape(batch, heads, hh // wh, wh, ww // wW, wW, -1)
        return x.permute(0, 2, 4, 1, 3, 5, 6).reshape(-1, heads, wh * wW, x.shape[-1])

    def region(length, size, offset):  # Swin's three regions per axis of the rolled grid
        index = torch.arange(length)
        return (index >= length - size).long() + (index >= length - offset).long() * (offset > 0)

    labels = region(hh, wh, sy)[:, None] * 3 + region(ww, wW, sx)[None, :]
    labels = labels.reshape(hh // wh, wh, ww // wW, wW).permute(0, 2, 1, 3).reshape(-1, wh * wW)
    mask = torch.where(labels[:, :, None] == labels[:, None, :], 0.0, -100.0)
    mask = mask.repeat(batch, 1, 1)[:, None].to(q.dtype)
    scores = partition(q) @ partition(k).transpose(-1, -2) * q.shape[-1] ** -0.5
    out = torch.softmax(scores + table + mask, dim=-1) @ partition(v)
    out = out.reshape(batch, hh // wh, ww // wW, heads, wh, wW, -1).permute(0, 3, 1, 4, 2, 5, 6)
    out = out.reshape(batch, heads, hh, ww, -1).roll((sy, sx), dims=(2, 3))
    return out.reshape(batch, heads, hh * ww, -1)


@pytest.mark.parametrize(
    ("grid", "window", "shift"),
    [((8, 8), (4, 4), (0, 0)), ((8, 8), (4, 4), (2, 2)), ((6, 8), (3, 4), (1, 3))],
)
def test_window_attention_equals_swin_per_window(grid, window, shift):
    cascade = window_attention(grid, window, shift, position_bias=True)
    gen = torch.Generator().manual_seed(sum(shift))
    n = grid[0] * grid[1]
    q, k, v = (torch.randn(2, 3, n, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    table = torch.randn(3, window[0] * window[1], window[0] * window[1], generator=gen)
    table = table.to(torch.float64)
    got = reference(cascade, dtype=torch.float64, Q=q, K=k, V=v, RB=table)
    want = swin_per_window(q, k, v, table, grid, window, shift)
    # Swin's -100 differs from exact masking by exp(-100) relative.
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_window_attention_without_shift_is_maxvit_block():
    assert implied_mask(window_attention((8, 8), 4), 64).equal(maxvit_mask((8, 8), 4, "block"))


def test_window_attention_runs_block_sparse_on_the_torch_target():
    import einscade

    cascade = window_attention((8, 8), 4, 2, position_bias=True)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 8, generator=gen) for _ in range(3))
    table = torch.randn(1, 16, 16, generator=gen)  # one bias for every head broadcasts
    compiled = einscade.compile(cascade, target="torch")
    got = compiled(Q=q, K=k, V=v, RB=table)
    want = reference(cascade, Q=q, K=k, V=v, RB=table)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not compiled.stats.dense_fallback


def test_window_attention_checks_its_arguments():
    with pytest.raises(ValueError, match="axis 0 .*window dividing the length"):
        window_attention((8, 8), 3)
    with pytest.raises(ValueError, match="0 <= shift < window, got window 4, shift 4"):
        window_attention((8, 8), 4, 4)
