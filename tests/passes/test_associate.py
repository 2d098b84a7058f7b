"""associate: linear attention loses its m x p scores, with the same numbers; softmax, masks
and non-linear maps are left alone with a reason; the cost model picks the order."""

from pathlib import Path

import pytest
import torch

import einscade
from einscade.codegen.reference import reference
from einscade.compiler.pipeline import parse_pipeline, run_pipeline
from einscade.frontends.variants import FEATURE_MAPS
from einscade.ir import Cascade, Scope, load, loads, verify
from einscade.passes.analysis import pass_count
from einscade.passes.associate import Associate
from tests.oracles.attention import linear_attention_dense

IR_DIR = Path(__file__).parent / "ir"
SIZES = {"b": 2, "h": 4, "hk": 2, "p": 7, "m": 9, "e": 3, "f": 5}


def positive_inputs(cascade: Cascade, sizes: dict[str, int], seed: int = 0) -> dict:
    """Random float64 inputs bounded away from 0, so every feature map's denominator is > 0."""
    g = torch.Generator().manual_seed(seed)
    return {
        d.name: torch.rand(*(sizes[r] for r in d.ranks), generator=g, dtype=torch.float64) + 0.1
        for d in cascade.inputs
    }


def score_tensors(cascade: Cascade) -> list[str]:
    """Computed tensors that carry both the query rank p and the key rank m."""
    scope = Scope(cascade)
    return [t.name for t in scope.tensors.values() if not t.is_input and {"m", "p"} <= set(t.ranks)]


@pytest.mark.parametrize("kv_heads", [False, True], ids=["mha", "gqa"])
@pytest.mark.parametrize("feature_map", sorted(FEATURE_MAPS))
def test_linear_attention_drops_the_scores_with_the_same_numbers(feature_map, kv_heads):
    cascade = einscade.linear_attention(feature_map, kv_heads=kv_heads)
    result = Associate().run(cascade)
    associated = verify(result.cascade)
    assert score_tensors(cascade) == ["S"]
    assert score_tensors(associated) == []
    assert result.rewrites == 2
    assert pass_count(cascade).passes == pass_count(associated).passes == 1
    tensors = positive_inputs(cascade, SIZES)
    expected = reference(cascade, **tensors)
    torch.testing.assert_close(reference(associated, **tensors), expected, rtol=1e-12, atol=0)
    dense = linear_attention_dense(tensors["Q"], tensors["K"], tensors["V"], feature_map)
    torch.testing.assert_close(expected, dense, rtol=1e-12, atol=0)


def test_grouped_heads_get_one_state_per_kv_head():
    associated = Associate().run(einscade.linear_attention(kv_heads=True)).cascade
    ranks = {t.name: t.ranks for t in Scope(associated).tensors.values()}
    assert ranks["FKV"] == ("b", "hk", "e", "f")
    assert ranks["ZFK"] == ("b", "hk", "e")
    assert "FKV[b, h // G, e, f]" in einscade.print_cascade(associated)


@pytest.mark.parametrize("path", sorted(IR_DIR.glob("associate_*.ecas")), ids=lambda p: p.name)
def test_every_ir_case_keeps_its_numbers(path):
    cascade = load(path)
    rewritten = Associate().run(cascade).cascade
    tensors = positive_inputs(cascade, SIZES, seed=1)
    expected = reference(cascade, dtype=torch.float64, **tensors)
    got = reference(rewritten, dtype=torch.float64, **tensors)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "cascade",
    [
        einscade.softmax_attention(),
        einscade.softmax_attention(causal=True, kv_heads=True),
        einscade.sigmoid_attention(),
        einscade.agent_attention(n_agents=3),
        einscade.linear_attention(causal=True),
    ],
    ids=["softmax", "causal_gqa", "sigmoid", "agent", "causal_linear"],
)
def test_other_families_are_left_alone(cascade):
    assert Associate().run(cascade).cascade == cascade


def test_a_non_linear_map_between_the_sums_declines_and_says_which():
    cascade = loads(
        "cascade @a(Q[p, e], K[m, e], V[m, f]) -> (AV) {\n"
        "  S[m, p] = Q[p, e] * K[m, e] :: sum(e)\n"
        "  A[m, p] = sigmoid(S[m, p])\n"
        "  AV[p, f] = A[m, p] * V[m, f] :: sum(m)\n"
        "}\n"
    )
    result = Associate().run(cascade)
    assert result.cascade == cascade
    assert [n.message for n in result.notes] == ["S -> AV: S passes through sigmoid in A"]


def test_a_second_use_of_the_scores_keeps_them_and_declines():
    cascade = loads(
        "cascade @a(Q[p, e], K[m, e], V[m, f]) -> (AV, S) {\n"
        "  S[m, p] = Q[p, e] * K[m, e] :: sum(e)\n"
        "  AV[p, f] = S[m, p] * V[m, f] :: sum(m)\n"
        "}\n"
    )
    result = Associate().run(cascade)
    assert result.cascade == cascade
    assert [n.message for n in result.notes] == ["S -> AV: S is an output"]


def test_the_other_order_is_refused_when_it_would_grow_the_intermediate():
    associated = Associate().run(einscade.linear_attention()).cascade
    again = Associate().run(associated)
    assert again.cascade == associated
    (message,) = [n.message for n in again.notes if n.message.startswith("FKV -> SNV")]
    assert message.startswith("FKV -> SNV: SNV: sum(e) first would not shrink the intermediate")
    assert message.endswith("FQFK[b, h, p, m] (B*H*M*P) vs FKV[b, h, e, f] (B*E*F*H)")


def test_the_long_ranks_decide_the_order():
    cascade = einscade.linear_attention()
    # With e and f as the long ranks and p, m bounded, the m x p scores are the small side.
    result = Associate(long="e:f").run(cascade)
    assert result.cascade == cascade
    assert "would not shrink" in result.notes[0].message


def test_spec_strings_reach_the_pass_and_its_option():
    (parsed,) = parse_pipeline("associate{long=p:m:n}")
    assert parsed == Associate(long="p:m:n")
    assert parsed.spec() == "associate{long=p:m:n}"
    result = run_pipeline(einscade.linear_attention(), "associate,dce", debug=0, dump_dir="")
    assert score_tensors(result.cascade) == []
