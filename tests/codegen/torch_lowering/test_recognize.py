"""Recognising the masked softmax form by structure, whatever the names."""

from __future__ import annotations

import pytest
import torch
from small_builtins import small

from einscade.codegen.reference import reference
from einscade.codegen.torch_lowering import TorchProgram, Unsupported, recognize
from einscade.frontends.softmax import softmax_attention
from einscade.ir import parse
from einscade.ir.expr import Name

RENAMED = """
cascade @renamed(X[n, g, t, c], Y[n, g, s, c], Z[n, g, s, d]) -> (OUT) {
  param tau: float = 0.5
  SC[n, g, s, t] = X[n, g, t, c] * Y[n, g, s, c] * tau :: sum(c) if s <= t and t - s < 5
  MX[n, g, t] = SC[n, g, s, t] :: max(s)
  EX[n, g, s, t] = exp(SC[n, g, s, t] - MX[n, g, t])
  DN[n, g, t] = EX[n, g, s, t] :: sum(s)
  W[n, g, s, t] = EX[n, g, s, t] / DN[n, g, t]
  OUT[n, t, g, d] = W[n, g, s, t] * Z[n, g, s, d] :: sum(s)
}
"""


def test_roles_of_grouped_query_attention() -> None:
    form = recognize(softmax_attention(causal=True, kv_heads=True))
    assert (form.query_rank, form.key_rank, form.head_rank, form.value_rank) == ("p", "m", "e", "f")
    assert form.batch_ranks == ("b", "h")
    assert form.linear_scale == (Name("scale"),)
    assert form.key.tensor == "K" and form.product == "QK"


def test_score_maps_beyond_a_scale_are_kept() -> None:
    form = recognize(softmax_attention(softcap=4.0, alibi=True))
    assert form.linear_scale is None and [s.target for s in form.score_maps] == ["S"]


def test_other_names_and_output_layout() -> None:
    cascade = parse(RENAMED)
    form = recognize(cascade)
    assert (form.query_rank, form.key_rank, form.batch_ranks) == ("t", "s", ("n", "g"))
    g = torch.Generator().manual_seed(3)
    tensors = {
        "X": torch.randn(2, 3, 40, 8, generator=g, dtype=torch.float64),
        "Y": torch.randn(2, 3, 40, 8, generator=g, dtype=torch.float64),
        "Z": torch.randn(2, 3, 40, 6, generator=g, dtype=torch.float64),
    }
    out = TorchProgram(cascade)(**tensors)
    assert out.shape == (2, 40, 3, 6)
    torch.testing.assert_close(out, reference(cascade, **tensors), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("linear", "not a sum over one rank"), ("linear_causal", "iterate block"),
     ("sigmoid", "normalisation SN / SD"), ("softplus", "exp(S - GM)"),
     ("agent", "does not weight an input V")],
)  # fmt: skip
def test_unsupported_forms_say_why(name: str, reason: str) -> None:
    with pytest.raises(Unsupported, match=reason.replace("(", r"\(").replace(")", r"\)")):
        recognize(small(name))
