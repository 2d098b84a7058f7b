"""defer-div: same numbers before and after on every family, fewer passes where it fires."""

import pytest
import torch

import einscade
from einscade.codegen.reference import reference
from einscade.ir import print_cascade, verify
from einscade.passes.analysis import pass_count
from einscade.passes.defer_div import DeferDiv


def _inputs(cascade, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for decl in cascade.inputs:
        shape = [sizes[r] for r in decl.ranks]
        if decl.name == "doc":
            tensors[decl.name] = torch.randint(0, 3, shape, generator=g)
        elif decl.name == "prefix":
            tensors[decl.name] = torch.randint(0, sizes["m"], shape, generator=g)
        else:
            tensors[decl.name] = torch.randn(*shape, generator=g, dtype=torch.float64)
    return tensors


SIZES = {"b": 2, "h": 4, "hk": 2, "p": 9, "m": 11, "e": 8, "f": 6, "a": 3, "l": 5,
         "n": 7, "c": 5, "d": 5}  # fmt: skip

CASES = {
    "softmax": (einscade.softmax_attention(), 3, 2),
    "scale_bias_softcap": (einscade.softmax_attention(bias=True, softcap=20.0, scale=0.3), 3, 2),
    "alibi_causal_gqa": (
        einscade.softmax_attention(alibi=True, causal="bottom_right", kv_heads=True),
        3,
        2,
    ),
    "window_sinks": (einscade.softmax_attention(causal=True, window=(3, 0), sinks=2), 3, 2),
    "documents": (einscade.softmax_attention(documents=True), 3, 2),
    "neighborhood": (einscade.neighborhood_attention(grid=(3, 3), kernel=(3, 3)), 3, 2),
    "agent": (einscade.agent_attention(n_agents=3), 3, 2),
    "softplus": (einscade.softplus_attention(), 2, 1),
    "triplet": (einscade.triplet_attention(), 3, 2),
    "sigmoid": (einscade.sigmoid_attention(), 1, 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_defer_div_keeps_the_numbers_and_removes_a_pass(name):
    cascade, before, after = CASES[name]
    sizes = dict(SIZES)
    if name in ("neighborhood", "documents"):
        sizes["p"] = sizes["m"] = 9
    result = DeferDiv().run(cascade)
    rewritten = verify(result.cascade)
    assert pass_count(cascade).passes == before
    assert pass_count(rewritten).passes == after
    tensors = _inputs(cascade, sizes)
    expected = reference(cascade, **tensors)
    torch.testing.assert_close(reference(rewritten, **tensors), expected, rtol=1e-12, atol=1e-12)


def test_defer_div_produces_fusemax_two_pass_form():
    three = einscade.load("examples/attention_3pass.ecas")
    two = einscade.load("examples/attention_2pass.ecas")
    rewritten = DeferDiv().run(three).cascade
    assert print_cascade(rewritten).splitlines()[1:] == print_cascade(two).splitlines()[1:]


def test_sigmoid_is_left_alone_and_says_why():
    result = DeferDiv().run(einscade.sigmoid_attention())
    assert result.cascade == einscade.sigmoid_attention()
    assert result.rewrites == 0
    assert "AV: no factor outside sum(m)" in [n.message for n in result.notes]


def test_fully_masked_rows_stay_zero_after_deferral():
    cascade = einscade.softmax_attention(causal="bottom_right")
    rewritten = verify(DeferDiv().run(cascade).cascade)
    assert "where(SD[b, h, p] == 0, 1.0, SD[b, h, p])" in print_cascade(rewritten)
    sizes = {**SIZES, "p": 9, "m": 4}
    tensors = _inputs(cascade, sizes)
    out = reference(rewritten, **tensors)
    assert not out.isnan().any()
    assert (out[:, :, :5] == 0).all()
    torch.testing.assert_close(out, reference(cascade, **tensors), rtol=1e-12, atol=1e-12)
