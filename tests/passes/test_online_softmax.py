"""online-softmax: every softmax-family cascade becomes 1 pass with the same numbers."""

import pytest
import torch

import einscade
from einscade.codegen.reference import reference
from einscade.ir import loads, print_cascade, verify
from einscade.passes.analysis import pass_count
from einscade.passes.defer_div import DeferDiv
from einscade.passes.online_softmax import OnlineSoftmax

from .test_defer_div import SIZES, _inputs

FAMILIES = {
    "softmax": (einscade.softmax_attention(), "m", {}),
    "everything": (
        einscade.softmax_attention(
            causal="bottom_right",
            kv_heads=True,
            window=(3, 1),
            sinks=1,
            alibi=True,
            softcap=10.0,
            bias=True,
            scale=0.7,
        ),
        "m",
        {"p": 9, "m": 5},
    ),  # fmt: skip
    "documents_prefix": (
        einscade.softmax_attention(documents=True, prefix_lm=True),
        "m",
        {"p": 12, "m": 12},
    ),  # fmt: skip
    "neighborhood_2d": (
        einscade.neighborhood_attention(grid=(2, 6), kernel=(1, 3), dilation=(1, 2)),
        "m",
        {"p": 12, "m": 12},
    ),  # fmt: skip
    "neighborhood_3d_causal": (
        einscade.neighborhood_attention(
            grid=(2, 2, 3), kernel=(2, 1, 3), causal=(True, False, False)
        ),
        "m",
        {"p": 12, "m": 12},
    ),  # fmt: skip
    "halo": (einscade.halo_attention(grid=(4, 3), block=2, halo=1), "m", {"p": 12, "m": 12}),
    "maxvit_grid": (
        einscade.maxvit_attention(grid=(2, 6), size=2, mode="grid"),
        "m",
        {"p": 12, "m": 12},
    ),  # fmt: skip
    "agent": (einscade.agent_attention(n_agents=3), "a", {}),
    "triplet": (einscade.triplet_attention(), "m", {}),
    "channel": (einscade.channel_attention(), "d", {}),
    "softplus": (einscade.softplus_attention(causal=True), "m", {}),
}


@pytest.mark.parametrize("defer", [True, False], ids=["after-defer-div", "alone"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_online_form_is_one_pass_and_exact(name, defer):
    cascade, rank, sizes = FAMILIES[name]
    start = DeferDiv().run(cascade).cascade if defer else cascade
    result = OnlineSoftmax(block=3).run(start)
    online = verify(result.cascade)
    assert pass_count(online, rank).passes == 1
    assert pass_count(online, "m").passes <= 1
    tensors = _inputs(cascade, {**SIZES, **sizes})
    expected = reference(cascade, **tensors)
    got = reference(online, **tensors)
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_fusemax_two_pass_becomes_the_one_pass_loop():
    online = OnlineSoftmax(block=16).run(einscade.load("examples/attention_2pass.ecas")).cascade
    text = print_cascade(online)
    assert "RGM[m1 + 1, p] = max(RGM[m1, p], LGM[m1, p])" in text
    assert "CGM[m1, p] = exp(RGM[m1, p] - RGM[m1 + 1, p])" in text
    assert "RSNV[m1 + 1, f, p] = LSNV[m1, f, p] + RSNV[m1, f, p] * CGM[m1, p]" in text
    assert "where" not in text  # no mask: no guard
    assert text.count("iterate m1") == 1


@pytest.mark.parametrize(
    "cascade",
    [einscade.sigmoid_attention(), einscade.linear_attention()],
    ids=["sigmoid", "linear"],
)
def test_one_pass_cascades_are_left_alone_with_a_reason(cascade):
    result = OnlineSoftmax().run(cascade)
    assert result.cascade == cascade
    assert [n.message for n in result.notes] == [
        "no reduction is read while walking its rank again"
    ]


def test_non_separable_operand_declines_and_says_why():
    cascade = loads(
        "cascade @odd(S[m, p], V[f, m]) -> (O) {\n"
        "  GM[p] = S[m, p] :: max(m)\n"
        "  SN[m, p] = exp(S[m, p] - GM[p]) + 1\n"
        "  O[f, p] = SN[m, p] * V[f, m] :: sum(m)\n"
        "}\n"
    )
    result = OnlineSoftmax().run(cascade)
    assert result.cascade == cascade
    (note,) = result.notes
    assert note.kind == "decline"
    assert "O: the operand is not separable" in note.message
