"""The attention-variant builders: structure of the cascades they write, and their values
under the reference executor (float64) against independent torch implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from oracles.attention import (
    causal_linear_attention_loop,
    linear_attention_dense,
    masked_softmax_attention,
)

from einscade.codegen.reference import reference
from einscade.frontends.variants import (
    agent_attention,
    channel_attention,
    linear_attention,
    sigmoid_attention,
    softplus_attention,
    triplet_attention,
)
from einscade.ir import BindError, Iterate, Num, Scope, loads, parse, print_cascade, verify

FEATURE_MAPS = ["elu+1", "relu", "identity"]
F64 = torch.float64


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64)


def _qkv(gen: torch.Generator, p: int = 5, m: int = 5, heads: int = 2, kv_heads: int = 2):
    """Q ``[2, heads, p, 4]``, K ``[2, kv_heads, m, 4]``, V ``[2, kv_heads, m, 3]``."""
    return (
        _randn(gen, 2, heads, p, 4),
        _randn(gen, 2, kv_heads, m, 4),
        _randn(gen, 2, kv_heads, m, 3),
    )


def _repeat_heads(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t.repeat_interleave(q.shape[1] // t.shape[1], dim=1)


# -- structure ---------------------------------------------------------------------------

BUILDS = {
    "linear": lambda: linear_attention(),
    "linear_relu_causal": lambda: linear_attention("relu", causal=True),
    "linear_gqa_causal": lambda: linear_attention("identity", causal=True, kv_heads=True),
    "sigmoid": lambda: sigmoid_attention(),
    "sigmoid_causal_gqa": lambda: sigmoid_attention(causal=True, scale=0.5, kv_heads=True),
    "softplus": lambda: softplus_attention(),
    "softplus_causal": lambda: softplus_attention(causal=True),
    "agent": lambda: agent_attention(3),
    "agent_gqa": lambda: agent_attention(2, scale=0.3, kv_heads=True),
    "channel": lambda: channel_attention(),
    "triplet": lambda: triplet_attention(),
}


@pytest.mark.parametrize("key", sorted(BUILDS))
def test_round_trip_name_and_output(key):
    cascade = BUILDS[key]()
    text = print_cascade(cascade)
    assert parse(text) == cascade
    assert verify(parse(text)) == cascade
    family = key.split("_")[0]
    assert cascade.name == f"{family}_attention"
    assert cascade.outputs == ("AV",)


def test_linear_noncausal_is_the_quadratic_form():
    stmts = {s.target: s for s in linear_attention().body}
    assert not any(isinstance(s, Iterate) for s in linear_attention().body)
    assert stmts["S"].reduce.ranks == ("e",)
    assert stmts["SD"].reduce.ranks == ("m",)
    assert stmts["SNV"].reduce.ranks == ("m",)
    assert print_cascade(linear_attention()).splitlines()[-2].strip() == (
        "AV[b, h, p, f] = SNV[b, h, p, f] / SD[b, h, p]"
    )


def test_linear_causal_iterates_over_the_key_rank():
    cascade = linear_attention(causal=True)
    loops = [s for s in cascade.body if isinstance(s, Iterate)]
    assert [loop.rank for loop in loops] == ["m"]
    scope = Scope(cascade)
    assert scope.tensors["KV"].generation == 4
    assert scope.tensors["Z"].generation == 3
    assert scope.tensors["SNV"].generation is None
    assert scope.tensors["SNV"].ranks == ("b", "h", "m", "f")


@pytest.mark.parametrize(
    ("feature_map", "expected"),
    [
        ("elu+1", "elu(Q[b, h, p, e]) + 1"),
        ("relu", "relu(Q[b, h, p, e])"),
        ("identity", "Q[b, h, p, e]"),
    ],
)
def test_feature_map_is_applied_to_q_and_k(feature_map, expected):
    text = print_cascade(linear_attention(feature_map))
    assert f"FQ[b, h, p, e] = {expected}\n" in text
    assert f"FK[b, h, m, e] = {expected.replace('Q[b, h, p, e]', 'K[b, h, m, e]')}\n" in text


def test_scale_defaults():
    assert "param scale: float = 1 / sqrt(E)" in print_cascade(sigmoid_attention())
    assert "param scale: float = 1 / sqrt(C)" in print_cascade(channel_attention())
    assert softplus_attention(scale=2).param("scale").default == Num(2.0)
    assert sigmoid_attention().param("sigmoid_bias").default == Num(0.0)
    assert "size A = 5" in print_cascade(agent_attention(5))


def test_causal_mask_sits_on_the_scores():
    for cascade in (sigmoid_attention(causal=True), softplus_attention(causal=True)):
        masked = [s.target for s in cascade.einsums() if s.predicate is not None]
        assert masked == ["S"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: linear_attention("softmax"), "unknown feature_map 'softmax'"),
        (lambda: linear_attention(causal="yes"), "causal must be True or False"),
        (lambda: sigmoid_attention(scale=math.nan), "sigmoid_attention: scale must be a finite"),
        (lambda: softplus_attention(scale="big"), "softplus_attention: scale must be a finite"),
        (lambda: agent_attention(0), "n_agents must be a positive int"),
        (lambda: agent_attention(True), "n_agents must be a positive int"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# -- linear attention ------------------------------------------------------------------


def _linear_inputs(gen: torch.Generator, feature_map: str, heads: int, kv_heads: int):
    """Inputs whose denominators stay away from 0 (the formula has no eps)."""
    q, k, v = _qkv(gen, p=6, m=6, heads=heads, kv_heads=kv_heads)
    if feature_map == "identity":
        return q.abs() + 0.1, k.abs() + 0.1, v
    # relu: one positive channel keeps phi(q) . phi(k) > 0; the others still get clipped.
    q[..., 0], k[..., 0] = q[..., 0].abs() + 0.5, k[..., 0].abs() + 0.5
    return q, k, v


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
@pytest.mark.parametrize("kv_heads", [False, True])
def test_linear_attention_matches_dense_oracle(rng, feature_map, kv_heads):
    q, k, v = _linear_inputs(rng, feature_map, 4, 2 if kv_heads else 4)
    cascade = linear_attention(feature_map, kv_heads=kv_heads)
    got = reference(cascade, Q=q, K=k, V=v)
    want = linear_attention_dense(q, k, v, feature_map)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
@pytest.mark.parametrize("kv_heads", [False, True])
def test_causal_linear_attention_matches_recurrence(rng, feature_map, kv_heads):
    q, k, v = _linear_inputs(rng, feature_map, 4, 2 if kv_heads else 4)
    cascade = linear_attention(feature_map, causal=True, kv_heads=kv_heads)
    got = reference(cascade, Q=q, K=k, V=v)
    want = causal_linear_attention_loop(q, k, v, feature_map)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_causal_linear_attention_differs_from_noncausal(rng):
    q, k, v = _linear_inputs(rng, "elu+1", 2, 2)
    causal = reference(linear_attention(causal=True), Q=q, K=k, V=v)
    full = reference(linear_attention(), Q=q, K=k, V=v)
    torch.testing.assert_close(causal[:, :, -1], full[:, :, -1], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(causal[:, :, 0], full[:, :, 0])


# -- sigmoid and softplus attention ----------------------------------------------------


def _sigmoid_oracle(q, k, v, scale, bias, mask=None):
    k, v = _repeat_heads(q, k), _repeat_heads(q, v)
    weights = torch.sigmoid(torch.matmul(q, k.mT) * scale + bias)
    if mask is not None:
        weights = weights * mask
    return torch.matmul(weights, v)


def _softplus_oracle(q, k, v, scale, mask=None):
    k, v = _repeat_heads(q, k), _repeat_heads(q, v)
    weights = F.softplus(torch.matmul(q, k.mT) * scale)
    if mask is not None:
        weights = weights * mask
    total = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights, v) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, out, torch.zeros_like(out))


def _causal(p: int, m: int, shift: int = 0) -> torch.Tensor:
    """Bool ``[p, m]``: key ``j`` visible to query ``i`` iff ``j <= i - shift``."""
    return torch.arange(m)[None, :] <= torch.arange(p)[:, None] - shift


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [False, True])
def test_sigmoid_attention(rng, causal, kv_heads):
    q, k, v = _qkv(rng, p=4, m=6, heads=4, kv_heads=2 if kv_heads else 4)
    cascade = sigmoid_attention(causal=causal, kv_heads=kv_heads)
    mask = _causal(4, 6) if causal else None
    got = reference(cascade, Q=q, K=k, V=v)
    torch.testing.assert_close(
        got, _sigmoid_oracle(q, k, v, 0.5, 0.0, mask), rtol=1e-10, atol=1e-10
    )
    # Apple's recommended bias b = -log(n), and a scale passed at run time.
    got = reference(cascade, Q=q, K=k, V=v, scale=0.3, sigmoid_bias=-math.log(6))
    want = _sigmoid_oracle(q, k, v, 0.3, -math.log(6), mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [False, True])
def test_softplus_attention(rng, causal, kv_heads):
    q, k, v = _qkv(rng, p=5, m=4, heads=4, kv_heads=2 if kv_heads else 4)
    cascade = softplus_attention(causal=causal, scale=0.7, kv_heads=kv_heads)
    got = reference(cascade, Q=q, K=k, V=v)
    want = _softplus_oracle(q, k, v, 0.7, _causal(5, 4) if causal else None)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _strictly_causal(cascade):
    """The same cascade with mask ``m < p``: query 0 sees no key at all."""
    text = print_cascade(cascade)
    assert "if m <= p" in text
    return loads(text.replace("if m <= p", "if m < p"))


def test_softplus_row_without_keys_is_zero(rng):
    q, k, v = _qkv(rng, p=4, m=4)
    got = reference(_strictly_causal(softplus_attention(causal=True)), Q=q, K=k, V=v)
    assert torch.isfinite(got).all()
    assert torch.equal(got[:, :, 0], torch.zeros_like(got[:, :, 0]))
    want = _softplus_oracle(q, k, v, 0.5, _causal(4, 4, shift=1))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_sigmoid_row_without_keys_is_zero(rng):
    q, k, v = _qkv(rng, p=4, m=4)
    got = reference(_strictly_causal(sigmoid_attention(causal=True)), Q=q, K=k, V=v)
    assert torch.equal(got[:, :, 0], torch.zeros_like(got[:, :, 0]))
    want = _sigmoid_oracle(q, k, v, 0.5, 0.0, _causal(4, 4, shift=1))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# -- agent, channel and triplet attention ----------------------------------------------


@pytest.mark.parametrize("kv_heads", [False, True])
def test_agent_attention_is_two_chained_softmaxes(rng, kv_heads):
    q, k, v = _qkv(rng, p=5, m=7, heads=4, kv_heads=2 if kv_heads else 4)
    agents = _randn(rng, 2, 4, 3, 4)
    got = reference(agent_attention(3, kv_heads=kv_heads), Q=q, K=k, V=v, AG=agents)
    agent_values = masked_softmax_attention(agents, k, v, scale=0.5)
    want = masked_softmax_attention(q, agents, agent_values, scale=0.5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_agent_count_is_checked_at_bind_time(rng):
    q, k, v = _qkv(rng)
    with pytest.raises(BindError, match="size A"):
        reference(agent_attention(3), Q=q, K=k, V=v, AG=_randn(rng, 2, 2, 4, 4))


def test_channel_attention_matches_davit(rng):
    q, k, v = (_randn(rng, 2, 2, 6, 4) for _ in range(3))
    got = reference(channel_attention(), Q=q, K=k, V=v)
    # DaViT: attn = softmax((q * C^-0.5)^T @ k); x = (attn @ v^T)^T.
    attn = torch.softmax(torch.matmul((q * 4**-0.5).mT, k), dim=-1)
    want = torch.matmul(attn, v.mT).mT
    assert got.shape == (2, 2, 6, 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_triplet_attention_matches_einsum(rng):
    q, k1, k2 = _randn(rng, 1, 2, 3, 4), _randn(rng, 1, 2, 4, 4), _randn(rng, 1, 2, 5, 4)
    v1, v2 = _randn(rng, 1, 2, 4, 3), _randn(rng, 1, 2, 5, 3)
    got = reference(triplet_attention(scale=0.4), Q=q, K1=k1, K2=k2, V1=v1, V2=v2)
    scores = torch.einsum("bhpe,bhme,bhle->bhpml", q, k1, k2) * 0.4
    weights = torch.softmax(scores.flatten(-2), dim=-1).view_as(scores)
    want = torch.einsum("bhpml,bhmf,bhlf->bhpf", weights, v1, v2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_softmax_stages_are_stable_for_large_scores(rng):
    """Subtracting the row max keeps exp finite where raw scores would overflow."""
    q, k, v = _qkv(rng, p=3, m=4)
    agents = _randn(rng, 2, 2, 2, 4)
    got = reference(agent_attention(2, scale=400.0), Q=q, K=k, V=v, AG=agents)
    agent_values = masked_softmax_attention(agents, k, v, scale=400.0)
    want = masked_softmax_attention(q, agents, agent_values, scale=400.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    q, k, v = (_randn(rng, 2, 2, 5, 4) for _ in range(3))
    got = reference(channel_attention(scale=400.0), Q=q, K=k, V=v)
    attn = torch.softmax(torch.matmul(q.mT, k) * 400.0, dim=-1)
    torch.testing.assert_close(got, torch.matmul(attn, v.mT).mT, rtol=1e-10, atol=1e-10)
