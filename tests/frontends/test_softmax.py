"""The softmax attention family: structure, text round trip, and numerics in float64 against
``torch.nn.functional.scaled_dot_product_attention`` and the oracles in ``tests/oracles``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from einscade.codegen.reference import reference
from einscade.frontends.softmax import softmax_attention
from einscade.ir import parse, print_cascade, print_expr
from einscade.ir.expr import accesses
from tests.oracles.attention import masked_softmax_attention
from tests.oracles.windows import (
    causal_mask,
    document_mask,
    prefix_lm_mask,
    sinks_or,
    sliding_window_mask,
)

F64 = torch.float64

OPTION_SETS = [
    {},
    {"causal": True},
    {"causal": "top_left", "kv_heads": True},
    {"causal": "bottom_right", "kv_heads": True, "scale": 0.25},
    {"softcap": 30.0},
    {"bias": True, "alibi": True},
    {"window": 3},
    {"window": (2, None)},
    {"window": (None, 1)},
    {"window": (-1, 4)},
    {"causal": True, "window": (3, 5), "sinks": 2},
    {"causal": "bottom_right", "window": (3, 0), "sinks": 1},
    {"documents": True},
    {"documents": True, "causal": True, "window": 4, "sinks": 1},
    {"prefix_lm": True},
    {"prefix_lm": True, "causal": "bottom_right", "sinks": 2},
    {
        "causal": True,
        "kv_heads": True,
        "scale": 2,
        "softcap": 5,
        "bias": True,
        "alibi": True,
        "window": (4, 2),
        "sinks": 3,
        "documents": True,
        "prefix_lm": True,
    },
]


def _qkv(rng, B=2, H=4, HK=4, P=8, M=8, E=16, F_=8):
    """Random Q, K, V in float64 (SDPA layout)."""
    q = torch.randn(B, H, P, E, generator=rng, dtype=F64)
    k = torch.randn(B, HK, M, E, generator=rng, dtype=F64)
    v = torch.randn(B, HK, M, F_, generator=rng, dtype=F64)
    return q, k, v


def _run(cascade, q, k, v, **extra):
    return reference(cascade, dtype=F64, Q=q, K=k, V=v, **extra)


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# -- structure -------------------------------------------------------------------------


@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_round_trip(options):
    cascade = softmax_attention(**options)
    text = print_cascade(cascade)
    assert parse(text) == cascade
    assert print_cascade(parse(text)) == text
    assert cascade.name == "softmax_attention"


@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_statement_names_and_mask_placement(options):
    cascade = softmax_attention(**options)
    stmts = {s.target: s for s in cascade.einsums()}
    assert list(stmts) == ["QK", "S", "GM", "SN", "SD", "A", "AV"]
    assert cascade.outputs == ("AV",)
    assert all(s.predicate is None for name, s in stmts.items() if name != "QK")
    has_mask = any(options.get(k) for k in ("causal", "window", "documents", "prefix_lm"))
    assert (stmts["QK"].predicate is not None) == has_mask


def test_gqa_reads_shared_kv_heads_without_repeating():
    cascade = softmax_attention(kv_heads=True)
    assert [(t.name, t.ranks) for t in cascade.inputs] == [
        ("Q", ("b", "h", "p", "e")),
        ("K", ("b", "hk", "m", "e")),
        ("V", ("b", "hk", "m", "f")),
    ]
    assert [(s.name, print_expr(s.value)) for s in cascade.sizes] == [("G", "H // HK")]
    kv_reads = [a for s in cascade.einsums() for a in accesses(s.value) if a.tensor in ("K", "V")]
    assert len(kv_reads) == 2
    assert all(print_expr(a.indices[1]) == "h // G" for a in kv_reads)


def test_params_and_score_order():
    cascade = softmax_attention(
        scale=0.5, softcap=20, bias=True, alibi=True, window=(3, 1), sinks=2
    )
    kinds = {p.name: p.kind for p in cascade.params}
    assert kinds == {
        "scale": "float",
        "softcap": "float",
        "window_left": "int",
        "window_right": "int",
        "sinks": "int",
    }
    text = print_cascade(cascade)
    assert "param scale: float = 0.5\n" in text
    assert "param softcap: float = 20.0\n" in text
    assert (
        "S[b, h, m, p] = softcap * tanh(QK[b, h, m, p] * scale / softcap) "
        "+ bias[b, h, p, m] + slopes[h] * (m - p)\n" in text
    )
    assert "param scale: float = 1 / sqrt(E)\n" in print_cascade(softmax_attention())


def test_causal_alignments_print_as_documented():
    assert "if m <= p\n" in print_cascade(softmax_attention(causal=True))
    assert "if m - M <= p - P\n" in print_cascade(softmax_attention(causal="bottom_right"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"causal": "left"}, "causal must be"),
        ({"window": "wide"}, "window must be"),
        ({"window": (1, 2, 3)}, "window needs"),
        ({"window": (1.5, 2)}, "window side"),
        ({"sinks": -1}, "sinks must be"),
        ({"sinks": 4}, "nothing to widen"),
        ({"sinks": 4, "window": (None, None)}, "nothing to widen"),
        ({"softcap": 0.0}, "softcap must be > 0"),
        ({"scale": math.inf}, "scale must be a finite number"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        softmax_attention(**options)


# -- numerics against SDPA -------------------------------------------------------------


def test_plain_matches_sdpa(rng):
    q, k, v = _qkv(rng, P=6, M=10)
    cascade = softmax_attention()
    _close(_run(cascade, q, k, v), F.scaled_dot_product_attention(q, k, v))
    _close(_run(cascade, q, k, v, scale=0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3))
    fixed = softmax_attention(scale=0.3)
    _close(_run(fixed, q, k, v), F.scaled_dot_product_attention(q, k, v, scale=0.3))


@pytest.mark.parametrize(("P", "M"), [(8, 8), (5, 11), (12, 7)])
def test_causal_top_left_matches_sdpa_is_causal(rng, P, M):
    # SDPA's is_causal is top-left aligned also when P != M.
    q, k, v = _qkv(rng, P=P, M=M)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    _close(_run(softmax_attention(causal=True), q, k, v), expected)
    _close(_run(softmax_attention(causal="top_left"), q, k, v), expected)


@pytest.mark.parametrize(("P", "M"), [(5, 11), (9, 9)])
def test_causal_bottom_right_matches_sdpa_causal_lower_right(rng, P, M):
    q, k, v = _qkv(rng, P=P, M=M)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(P, M))
    _close(_run(softmax_attention(causal="bottom_right"), q, k, v), expected)


@pytest.mark.parametrize("HK", [4, 2, 1])
def test_gqa_and_mqa_match_sdpa_enable_gqa(rng, HK):
    q, k, v = _qkv(rng, H=4, HK=HK, P=7, M=9)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    _close(_run(softmax_attention(causal=True, kv_heads=True), q, k, v), expected)


def test_window_matches_sdpa_bool_mask(rng):
    q, k, v = _qkv(rng, P=9, M=13)
    mask = sliding_window_mask(9, 13, left=2, right=3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    _close(_run(softmax_attention(window=(2, 3)), q, k, v), expected)


def test_broadcast_bias_matches_sdpa_float_mask(rng):
    q, k, v = _qkv(rng, H=3, HK=3, P=6, M=10)
    bias = torch.randn(1, 3, 6, 10, generator=rng, dtype=F64)
    bias[0, 1, 2, 4:7] = -math.inf  # partly -inf rows act as masked keys
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.4)
    _close(_run(softmax_attention(bias=True, scale=0.4), q, k, v, bias=bias), expected)


# -- numerics against the masked-softmax oracle ------------------------------------------


@pytest.mark.parametrize(("P", "M"), [(6, 10), (10, 10), (10, 6)])
def test_causal_bottom_right(rng, P, M):
    q, k, v = _qkv(rng, H=2, HK=2, P=P, M=M)
    expected = masked_softmax_attention(q, k, v, causal_mask(P, M, "bottom_right"))
    got = _run(softmax_attention(causal="bottom_right"), q, k, v)
    _close(got, expected)
    if P > M:  # the first P - M queries see no key: exact zeros, never NaN
        assert torch.equal(got[:, :, : P - M], torch.zeros_like(got[:, :, : P - M]))
        assert got[:, :, P - M :].abs().sum() > 0


@pytest.mark.parametrize(
    ("window", "causal", "P", "M", "left", "right"),
    [
        (3, False, 12, 12, 3, 3),
        ((2, 5), False, 7, 12, 2, 5),
        ((None, 1), False, 12, 7, None, 1),
        ((4, -1), False, 9, 9, 4, None),
        ((3, 7), True, 10, 14, 3, 0),
        ((2, 0), "bottom_right", 6, 11, 2, 0),
        (1, "bottom_right", 11, 6, 1, 0),
    ],
)
def test_sliding_window(rng, window, causal, P, M, left, right):
    q, k, v = _qkv(rng, B=1, H=2, HK=2, P=P, M=M)
    align = "bottom_right" if causal == "bottom_right" else "top_left"
    mask = sliding_window_mask(P, M, left, right, causal=bool(causal), align=align)
    expected = masked_softmax_attention(q, k, v, mask)
    _close(_run(softmax_attention(window=window, causal=causal), q, k, v), expected)


def test_window_bounds_are_run_time_params(rng):
    q, k, v = _qkv(rng, B=1, H=2, HK=2, P=10, M=10)
    cascade = softmax_attention(window=(3, 2))
    mask = sliding_window_mask(10, 10, left=1, right=4)
    got = _run(cascade, q, k, v, window_left=1, window_right=4)
    _close(got, masked_softmax_attention(q, k, v, mask))


@pytest.mark.parametrize(("causal", "P", "M"), [(True, 12, 12), ("bottom_right", 14, 9)])
def test_sinks_widen_the_window(rng, causal, P, M):
    q, k, v = _qkv(rng, B=1, H=2, HK=2, P=P, M=M)
    align = "bottom_right" if causal == "bottom_right" else "top_left"
    window = sliding_window_mask(P, M, 2, 0, causal=True, align=align)
    cascade = softmax_attention(causal=causal, window=(2, 0), sinks=3)
    _close(_run(cascade, q, k, v), masked_softmax_attention(q, k, v, sinks_or(window, 3)))
    # The sink count is a run-time param too.
    got = _run(cascade, q, k, v, sinks=1)
    _close(got, masked_softmax_attention(q, k, v, sinks_or(window, 1)))


def test_documents_with_causal(rng):
    q, k, v = _qkv(rng, B=2, H=2, HK=2, P=12, M=12)
    doc = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3], [5, 5, 5, 5, 5, 5, 7, 7, 8, 8, 8, 8]])
    masks = torch.stack([document_mask(d, d) for d in doc])[:, None]
    _close(
        _run(softmax_attention(documents=True), q, k, v, doc=doc),
        masked_softmax_attention(q, k, v, masks),
    )
    causal_docs = masks & causal_mask(12, 12)
    _close(
        _run(softmax_attention(documents=True, causal=True), q, k, v, doc=doc),
        masked_softmax_attention(q, k, v, causal_docs),
    )


def test_documents_isolate_sinks(rng):
    q, k, v = _qkv(rng, B=1, H=2, HK=2, P=10, M=10)
    doc = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    window = sinks_or(sliding_window_mask(10, 10, 1, 0, causal=True), 2)
    mask = window & document_mask(doc[0], doc[0])
    cascade = softmax_attention(documents=True, causal=True, window=(1, 0), sinks=2)
    _close(_run(cascade, q, k, v, doc=doc), masked_softmax_attention(q, k, v, mask))


def test_prefix_lm(rng):
    q, k, v = _qkv(rng, B=2, H=2, HK=1, P=11, M=11)
    prefix = torch.tensor([4, 0])
    mask = torch.stack([prefix_lm_mask(11, int(n)) for n in prefix])[:, None]
    cascade = softmax_attention(prefix_lm=True, kv_heads=True)
    _close(_run(cascade, q, k, v, prefix=prefix), masked_softmax_attention(q, k, v, mask))


def test_softcap(rng):
    q, k, v = _qkv(rng, P=6, M=9)
    q = q * 4  # large scores, so the cap bends them
    expected = masked_softmax_attention(q, k, v, scale=0.5, softcap=2.0)
    _close(_run(softmax_attention(scale=0.5, softcap=2.0), q, k, v), expected)
    expected = masked_softmax_attention(q, k, v, softcap=1.5)
    _close(_run(softmax_attention(softcap=2.0), q, k, v, softcap=1.5), expected)


def test_alibi_adds_linear_distance_bias(rng):
    q, k, v = _qkv(rng, H=4, HK=2, P=7, M=10)
    slopes = torch.tensor([2.0**-1, 2.0**-2, 2.0**-3, 2.0**-4], dtype=F64)
    distance = torch.arange(10)[None, :] - torch.arange(7)[:, None]  # m - p, [P, M]
    bias = slopes[:, None, None] * distance
    mask = causal_mask(7, 10)
    expected = masked_softmax_attention(q, k, v, mask, bias=bias)
    cascade = softmax_attention(alibi=True, causal=True, kv_heads=True)
    _close(_run(cascade, q, k, v, slopes=slopes), expected)


def test_everything_together(rng):
    B, H, HK, N = 2, 4, 2, 12
    q, k, v = _qkv(rng, B=B, H=H, HK=HK, P=N, M=N)
    q = q * 3
    bias = torch.randn(B, 1, N, N, generator=rng, dtype=F64)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=F64)
    doc = torch.tensor([[0] * 7 + [1] * 5, [3] * 12])
    prefix = torch.tensor([3, 5])
    alibi = slopes[:, None, None] * (torch.arange(N)[None, :] - torch.arange(N)[:, None])
    masks = []
    for b in range(B):
        prefix_or_causal = prefix_lm_mask(N, int(prefix[b]))
        window = sliding_window_mask(N, N, 4, None)
        masks.append(sinks_or(prefix_or_causal & window, 2) & document_mask(doc[b], doc[b]))
    mask = torch.stack(masks)[:, None]
    expected = masked_softmax_attention(q, k, v, mask, bias=bias + alibi, scale=0.3, softcap=4.0)
    cascade = softmax_attention(
        causal=True,
        kv_heads=True,
        scale=0.3,
        softcap=4.0,
        bias=True,
        alibi=True,
        window=(4, 1),
        sinks=2,
        documents=True,
        prefix_lm=True,
    )
    got = _run(cascade, q, k, v, bias=bias, slopes=slopes, doc=doc, prefix=prefix)
    _close(got, expected)


def test_fully_masked_rows_give_exact_zeros(rng):
    # Run-time bounds (left 3, right -1) show keys p-3 .. p-1 only: query 0 sees no key, and
    # neither does query 4, the first token of document 1 (its window lies in document 0).
    q, k, v = _qkv(rng, B=1, H=2, HK=2, P=8, M=8)
    doc = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    cascade = softmax_attention(documents=True, window=(3, 0))
    got = _run(cascade, q, k, v, doc=doc, window_right=-1)
    p, m = torch.arange(8)[:, None], torch.arange(8)[None, :]
    mask = (m >= p - 3) & (m <= p - 1) & document_mask(doc[0], doc[0])
    _close(got, masked_softmax_attention(q, k, v, mask))
    for row in (0, 4):
        assert not mask[row].any()
        assert torch.equal(got[:, :, row], torch.zeros_like(got[:, :, row]))
    assert got[:, :, 1].abs().sum() > 0
