"""The reference executor against plain torch: FuseMax cascades, tails, masks, binding."""

from pathlib import Path

import pytest
import torch

from einscade.codegen.reference import reference
from einscade.ir import BindError, load, loads

EXAMPLES = Path(__file__).parents[2] / "examples"


def _qkv(E=8, F=6, P=10, M=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(E, P, generator=g, dtype=torch.float64)
    k = torch.randn(E, M, generator=g, dtype=torch.float64)
    v = torch.randn(F, M, generator=g, dtype=torch.float64)
    return q, k, v


def _softmax_attention(q, k, v):
    return (torch.softmax(q.T @ k, dim=-1) @ v.T).T


@pytest.mark.parametrize("name", ["attention_3pass", "attention_2pass", "attention_1pass"])
@pytest.mark.parametrize("M", [16, 37, 5])
def test_fusemax_cascades_agree_with_softmax_attention(name, M):
    q, k, v = _qkv(M=M)
    out = reference(load(EXAMPLES / f"{name}.ecas"), Q=q, K=k, V=v)
    torch.testing.assert_close(out, _softmax_attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_one_pass_tile_size_is_a_size_binding():
    text = (EXAMPLES / "attention_1pass.ecas").read_text().replace("size M0 = 16\n", "")
    q, k, v = _qkv(M=23)
    out = reference(loads(text), Q=q, K=k, V=v, M0=4)
    torch.testing.assert_close(out, _softmax_attention(q, k, v), rtol=1e-12, atol=1e-12)


_MASKED = """
cascade @masked(Q[e, p], K[e, m], V[f, m]) -> (AV) {
  QK[m, p] = Q[e, p] * K[e, m] :: sum(e) if m - M <= p - P
  GM[p] = QK[m, p] :: max(m)
  SN[m, p] = exp(QK[m, p] - GM[p])
  SD[p] = SN[m, p] :: sum(m)
  A[m, p] = SN[m, p] / SD[p]
  AV[f, p] = A[m, p] * V[f, m] :: sum(m)
}
"""


def test_fully_masked_rows_give_zero_not_nan():
    q, k, v = _qkv(P=7, M=3)
    out = reference(loads(_MASKED), Q=q, K=k, V=v)
    assert not out.isnan().any()
    assert (out[:, :4] == 0).all()
    mask = torch.arange(3)[None, :] - 3 <= torch.arange(7)[:, None] - 7
    scores = (q.T @ k).masked_fill(~mask, float("-inf"))
    expected = (torch.softmax(scores[4:], dim=-1) @ v.T).T
    torch.testing.assert_close(out[:, 4:], expected)


def test_input_dtype_is_kept_unless_asked():
    q, k, v = (t.float() for t in _qkv(M=9))
    c = load(EXAMPLES / "attention_3pass.ecas")
    assert reference(c, Q=q, K=k, V=v).dtype == torch.float32
    assert reference(c, Q=q, K=k, V=v, dtype=torch.float64).dtype == torch.float64


_BIAS = """
cascade @bias(Q[b, p, e], K[b, m, e], bias[b, p, m]) -> (S) {
  S[b, p, m] = Q[b, p, e] * K[b, m, e] :: sum(e)
  T[b, p, m] = S[b, p, m] + bias[b, p, m]
}
"""


def test_size_one_dims_broadcast():
    c = loads(_BIAS.replace("-> (S)", "-> (T)"))
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    bias = torch.randn(1, 3, 5)
    out = reference(c, Q=q, K=k, bias=bias)
    torch.testing.assert_close(out, q @ k.transpose(1, 2) + bias)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"K": torch.randn(2, 5, 4), "bias": torch.randn(2, 3, 5)}, "missing input tensor 'Q'"),
        (
            {"Q": torch.randn(2, 3, 4), "K": torch.randn(2, 5, 3), "bias": torch.randn(2, 3, 5)},
            "size E is 4 from Q but 3 from K",
        ),
        (
            {"Q": torch.randn(3, 4), "K": torch.randn(2, 5, 4), "bias": torch.randn(2, 3, 5)},
            "input 'Q' has 2 dims [3, 4], the cascade declares 3 [b, p, e]",
        ),
    ],
)
def test_bind_errors_name_the_problem(arguments, message):
    with pytest.raises(BindError) as error:
        reference(loads(_BIAS), **arguments)
    assert str(error.value) == message


def test_missing_parameter_is_reported():
    c = loads("cascade @s(X[n]) -> (Y) {\n  param alpha: float\n  Y[n] = X[n] * alpha\n}\n")
    with pytest.raises(BindError, match="missing parameter 'alpha' \\(float\\)"):
        reference(c, X=torch.ones(3))
    torch.testing.assert_close(reference(c, X=torch.ones(3), alpha=2.0), torch.full((3,), 2.0))


def test_where_and_value_comparisons():
    c = loads(
        "cascade @w(X[n]) -> (Y) {\n"
        "  M[] = X[n] :: max(n)\n"
        "  Y[n] = where(X[n] == M[], 1.0, 0.0)\n"
        "}\n"
    )
    x = torch.tensor([1.0, 3.0, 2.0])
    torch.testing.assert_close(reference(c, X=x), torch.tensor([0.0, 1.0, 0.0]))


def test_grid_axes_are_row_major_coordinates():
    c = loads(
        "cascade @g(X[p]) -> (Y) {\n"
        "  size PX = 3\n  size PY = 4\n  grid p = (px, py)\n"
        "  Y[p] = X[p] * 0 + px * 10 + py\n"
        "}\n"
    )
    out = reference(c, X=torch.zeros(12))
    expected = torch.tensor([10.0 * (i // 4) + i % 4 for i in range(12)])
    torch.testing.assert_close(out, expected)


def test_grid_size_mismatch_is_reported():
    c = loads(
        "cascade @g(X[p]) -> (Y) {\n"
        "  size PX = 3\n  size PY = 4\n  grid p = (px, py)\n  Y[p] = X[p]\n}\n"
    )
    with pytest.raises(BindError, match="size P is 10 but grid p is 3 x 4"):
        reference(c, X=torch.zeros(10))
