"""Each attention form the backend captures, compiled and compared with eager; and the forms
it must leave alone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.frontends.fx.harness import compile_run, qkv

S = 0.3  # a scale that is not 1 / sqrt(8), so a dropped or doubled scale shows


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1)


# -- hand-written attention ------------------------------------------------------------------


def scale_on_scores(q, k, v):
    return torch.softmax(q @ _t(k) * S, dim=-1) @ v


def divide_by_sqrt(q, k, v):
    return F.softmax(torch.matmul(q, k.transpose(2, 3)) / math.sqrt(q.shape[-1]), dim=-1) @ v


def scale_on_q(q, k, v):  # timm
    return ((q * S) @ _t(k)).softmax(-1) @ v


def permuted_k(q, k, v):
    return (q @ k.permute(0, 1, 3, 2) * S).softmax(-1).matmul(v)


def bmm_3d(q, k, v):
    b, h, n, e = q.shape
    q3, k3, v3 = (x.reshape(b * h, n, e) for x in (q, k, v))
    weights = torch.softmax(torch.bmm(q3, k3.transpose(1, 2)) * S, dim=-1)
    return torch.bmm(weights, v3).reshape(b, h, n, e)


def einsum_heads_last(q, k, v):
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * S
    return torch.einsum("bhqk,bhkd->bqhd", scores.softmax(-1), v)


def float32_softmax_dropout(q, k, v):  # a half model: softmax in float32, eval dropout
    weights = F.softmax((q @ _t(k)).float() * S, dim=-1, dtype=torch.float32).to(q.dtype)
    return F.dropout(weights, p=0.1, training=False) @ v


def repeat_interleave_gqa(q, k, v):
    k, v = (x.repeat_interleave(2, dim=1) for x in (k, v))
    return torch.softmax(q @ _t(k) * S, -1) @ v


def repeat_kv_gqa(q, k, v):  # transformers' repeat_kv
    b, hk, n, d = k.shape
    k, v = (x[:, :, None, :, :].expand(b, hk, 2, n, d).reshape(b, hk * 2, n, d) for x in (k, v))
    return torch.softmax(q @ _t(k) * S, -1) @ v


def causal_where_from_arange(q, k, v):
    n = q.shape[-2]
    keep = torch.arange(n)[None, :] <= torch.arange(n)[:, None]
    return torch.where(keep, q @ _t(k) * S, float("-inf")).softmax(-1) @ v


def sliding_window_masked_fill(q, k, v):
    n = q.shape[-2]
    query, key = torch.arange(n)[:, None], torch.arange(n)[None, :]
    hidden = ~((key > query - 3) & (key <= query))
    return (q @ _t(k)).masked_fill(hidden, float("-inf")).mul(S).softmax(-1) @ v


def finfo_min_additive_causal(q, k, v):  # transformers' eager mask, scaled after the add
    n = q.shape[-2]
    keep = torch.ones(n, n, dtype=torch.bool).tril()
    mask = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
    return ((q @ _t(k) + mask) * S).softmax(-1) @ v


def two_documents(q, k, v):
    doc = torch.tensor([0, 0, 0, 1, 1, 1])
    return (q @ _t(k) * S).masked_fill(doc[:, None] != doc[None, :], -1e9).softmax(-1) @ v


HAND_WRITTEN = {
    scale_on_scores: "softmax_attention(scale=0.3)",
    divide_by_sqrt: "softmax_attention(scale=0.353553)",
    scale_on_q: "softmax_attention(scale=0.3)",
    permuted_k: "softmax_attention(scale=0.3)",
    bmm_3d: "softmax_attention(scale=0.3)",
    einsum_heads_last: "softmax_attention(scale=0.3)",
    float32_softmax_dropout: "softmax_attention(scale=0.3)",
    repeat_interleave_gqa: "softmax_attention(kv_heads, scale=0.3)",
    repeat_kv_gqa: "softmax_attention(kv_heads, scale=0.3)",
    causal_where_from_arange: "softmax_attention(causal, scale=0.3)",
    sliding_window_masked_fill: "softmax_attention(causal_window(left=2), scale=0.3)",
    finfo_min_additive_causal: "softmax_attention(causal, scale=0.3)",
    two_documents: "softmax_attention(documents, scale=0.3)",
}


@pytest.mark.parametrize("fn", list(HAND_WRITTEN), ids=lambda f: f.__name__)
def test_hand_written_attention_is_captured(fn):
    kv_heads = 1 if "gqa" in fn.__name__ else None
    run = compile_run(fn, *qkv(kv_heads=kv_heads))
    assert [r.summary for r in run.captured] == [HAND_WRITTEN[fn]], run.records
    assert run.captured[0].family == "softmax"
    run.assert_close()


def test_bfloat16_softmax_runs_in_float32():
    run = compile_run(float32_softmax_dropout, *qkv(dtype=torch.bfloat16))
    assert len(run.captured) == 1 and run.got.dtype == torch.bfloat16
    run.assert_close(atol=2e-2, rtol=2e-2)


def test_data_dependent_masks_become_a_bias():
    """A padding mask from the inputs and an additive bias input: bias, not structure."""

    def padded(q, k, v, keep, bias):
        scores = (q @ _t(k) + bias).masked_fill(~keep[:, None, None, :], float("-inf"))
        return (scores * S).softmax(-1) @ v

    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    run = compile_run(padded, *qkv(), keep, torch.randn(1, 2, 6, 6))
    assert [r.summary for r in run.captured] == ["softmax_attention(bias, scale=0.3)"]
    run.assert_close()


@pytest.mark.parametrize("target", ["torch", "reference"])
def test_targets(target):
    run = compile_run(causal_where_from_arange, *qkv(), options={"target": target})
    assert len(run.captured) == 1
    run.assert_close()


def test_two_sites_in_a_row():
    def stacked(q, k, v):
        first = scale_on_scores(q, k, v)
        return scale_on_q(first, k, v)

    run = compile_run(stacked, *qkv())
    assert len(run.captured) == 2
    run.assert_close()


# -- F.scaled_dot_product_attention ----------------------------------------------------------


def sdpa_plain(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_causal_scaled(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=S)


def sdpa_gqa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def sdpa_constant_bool_mask(q, k, v):
    n = q.shape[-2]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(n, n).tril().bool())


def sdpa_constant_float_mask(q, k, v):
    n = q.shape[-2]
    mask = torch.full((n, n), float("-inf")).triu(1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sdpa_3d(q, k, v):
    return F.scaled_dot_product_attention(q[:, 0], k[:, 0], v[:, 0])


SDPA = {
    sdpa_plain: "softmax_attention()",
    sdpa_causal_scaled: "softmax_attention(causal, scale=0.3)",
    sdpa_gqa: "softmax_attention(causal, kv_heads)",
    sdpa_constant_bool_mask: "softmax_attention(causal)",
    sdpa_constant_float_mask: "softmax_attention(causal)",
    sdpa_3d: "softmax_attention()",
}


@pytest.mark.parametrize("fn", list(SDPA), ids=lambda f: f.__name__)
def test_sdpa_is_captured(fn):
    run = compile_run(fn, *qkv(heads=4, kv_heads=2 if fn is sdpa_gqa else None))
    assert [r.summary for r in run.captured] == [SDPA[fn]], run.records
    run.assert_close()


@pytest.mark.parametrize("boolean", [True, False], ids=["bool", "float"])
def test_sdpa_run_time_masks_become_a_bias(boolean):
    def masked(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    keep = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    keep[1, 0, 2] = False  # a query that sees no key: SDPA gives 0 there, and so must we
    mask = keep if boolean else torch.randn(2, 1, 6, 6).masked_fill(~keep, float("-inf"))
    run = compile_run(masked, *qkv(), mask)
    assert bool((run.want[1, :, 2] == 0).all())
    assert [r.summary for r in run.captured] == ["softmax_attention(bias)"]
    run.assert_close()


# -- left alone ------------------------------------------------------------------------------


def softmax_of_logits(q, k, v):  # a classifier head: no A @ V
    return torch.softmax(q.sum(-1), dim=-1)


def softmax_over_queries(q, k, v):
    return torch.softmax(q @ _t(k), dim=-2) @ v


def score_dependent_mask(q, k, v):  # top-k style sparsification: the mask reads the scores
    scores = q @ _t(k) * S
    return scores.masked_fill(scores < 0, float("-inf")).softmax(-1) @ v


def weights_also_returned(q, k, v):  # output_attentions=True
    weights = torch.softmax(q @ _t(k) * S, dim=-1)
    return weights @ v, weights


def active_dropout(q, k, v):
    return F.dropout(torch.softmax(q @ _t(k), dim=-1), p=0.5, training=True) @ v


def small_fill(q, k, v):  # a fill of -1 changes the scores, it does not mask
    keep = torch.ones(6, 6, dtype=torch.bool).tril()
    return (q @ _t(k)).masked_fill(~keep, -1.0).softmax(-1) @ v


def sdpa_dropout(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)


LEFT_ALONE = {
    softmax_of_logits: "not A @ V",
    softmax_over_queries: "not the last (key) dim",
    score_dependent_mask: "is also read by",
    weights_also_returned: "not only by A @ V",
    active_dropout: "is active",
    small_fill: "not a mask value",
    sdpa_dropout: "dropout_p=0.5 is active",
}


@pytest.mark.parametrize("fn", list(LEFT_ALONE), ids=lambda f: f.__name__)
def test_forms_that_are_not_attention_stay_untouched(fn):
    torch.manual_seed(0)
    run = compile_run(fn, *qkv())
    assert not run.captured
    assert len(run.skipped) == 1 and LEFT_ALONE[fn] in run.skipped[0].reason, run.records
    if "dropout" not in fn.__name__:
        torch.testing.assert_close(run.got, run.want, equal_nan=True)
