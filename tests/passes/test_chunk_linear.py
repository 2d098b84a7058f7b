"""chunk-linear: the causal linear recurrence runs over chunks with the same numbers for every
block size (ragged tails included), feature map and head layout; other recurrences decline."""

from pathlib import Path

import pytest
import torch

import einscade
from einscade.codegen.reference import reference
from einscade.compiler.pipeline import parse_pipeline, run_pipeline
from einscade.frontends.variants import FEATURE_MAPS
from einscade.ir import EinscadeError, load, loads, print_cascade, verify
from einscade.passes.analysis import pass_count
from einscade.passes.chunk_linear import ChunkLinear
from einscade.passes.defer_div import DeferDiv
from einscade.passes.online_softmax import OnlineSoftmax
from tests.oracles.attention import causal_linear_attention_loop

from .test_associate import positive_inputs

IR_DIR = Path(__file__).parent / "ir"
N = 11  # tokens: not a multiple of 3, 4 or 8, so the last chunk is ragged


def _sizes(n: int = N) -> dict[str, int]:
    return {"b": 2, "h": 4, "hk": 2, "p": n, "m": n, "e": 3, "f": 4}


@pytest.mark.parametrize("block", [1, 3, 4, 16])
@pytest.mark.parametrize("kv_heads", [False, True], ids=["mha", "gqa"])
@pytest.mark.parametrize("feature_map", sorted(FEATURE_MAPS))
def test_chunked_form_keeps_the_numbers(feature_map, kv_heads, block):
    cascade = einscade.linear_attention(feature_map, causal=True, kv_heads=kv_heads)
    result = ChunkLinear(block=block).run(cascade)
    chunked = verify(result.cascade)
    assert result.rewrites == 1
    assert pass_count(chunked).passes == pass_count(cascade).passes == 1
    tensors = positive_inputs(cascade, _sizes())
    expected = reference(cascade, **tensors)
    torch.testing.assert_close(reference(chunked, **tensors), expected, rtol=1e-12, atol=0)
    loop = causal_linear_attention_loop(tensors["Q"], tensors["K"], tensors["V"], feature_map)
    torch.testing.assert_close(expected, loop, rtol=1e-12, atol=0)


def test_signed_inputs_and_a_single_token():
    cascade = einscade.linear_attention("elu+1", causal=True)
    chunked = ChunkLinear(block=4).run(cascade).cascade
    for n in (1, 9):
        g = torch.Generator().manual_seed(n)
        tensors = {
            d.name: torch.randn(*(_sizes(n)[r] for r in d.ranks), generator=g, dtype=torch.float64)
            for d in cascade.inputs
        }
        expected = reference(cascade, **tensors)
        torch.testing.assert_close(reference(chunked, **tensors), expected, rtol=1e-12, atol=0)


def test_the_chunk_has_masked_scores_and_one_state_update():
    chunked = ChunkLinear(block=8).run(einscade.linear_attention(causal=True)).cascade
    text = print_cascade(chunked)
    assert "iterate m1 {" in text and "iterate m {" not in text
    assert (
        "S[b, h, m1, m0q, m0] = FQ[b, h, m1 * M0 + m0q, e] * FK[b, h, m1 * M0 + m0, e] "
        ":: sum(e) if m0 <= m0q" in text
    )
    assert "KV[b, h, e, f, m1 + 1] = KV[b, h, e, f, m1] + LKV[b, h, e, f, m1]" in text
    assert "PSNV[b, h, m1, m0q, f] = FQ[b, h, m1 * M0 + m0q, e] * KV[b, h, e, f, m1]" in text
    assert text.count("S[b, h, m1, m0q, m0] =") == 1  # numerator and denominator share it


@pytest.mark.parametrize("path", sorted(IR_DIR.glob("chunk_linear_*.ecas")), ids=lambda p: p.name)
def test_every_ir_case_keeps_its_numbers(path):
    cascade = load(path)
    rewritten = ChunkLinear(block=3).run(cascade).cascade
    tensors = positive_inputs(cascade, _sizes(), seed=2)
    expected = reference(cascade, dtype=torch.float64, P=N, **tensors)
    got = reference(rewritten, dtype=torch.float64, P=N, **tensors)
    for a, b in zip(got, expected, strict=True) if isinstance(got, tuple) else [(got, expected)]:
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _recurrence(update: str, read: str) -> str:
    return (
        "cascade @rec(FQ[b, m, e], FK[b, m, e], V[b, m, f]) -> (O) {\n"
        "  param gamma: float = 0.9\n"
        "  iterate m {\n"
        "    KV[b, e, f, 0] = 0\n"
        f"    KV[b, e, f, m + 1] = {update}\n"
        f"    SNV[b, m, f] = {read}\n"
        "  }\n"
        "  O[b, p, f] = SNV[b, p, f]\n"
        "}\n"
    )


PLAIN = "KV[b, e, f, m] + FK[b, m, e] * V[b, m, f]"
READ = "FQ[b, m, e] * KV[b, e, f, m + 1] :: sum(e)"


@pytest.mark.parametrize(
    ("update", "read", "reason"),
    [
        (
            "KV[b, e, f, m] * gamma + FK[b, m, e] * V[b, m, f]",
            READ,
            "KV[.., m + 1] scales KV[.., m] by gamma, not a plain sum",
        ),
        (
            "max(KV[b, e, f, m], FK[b, m, e] * V[b, m, f])",
            READ,
            "KV[.., m + 1] is not linear in KV[.., m] (through max)",
        ),
        ("KV[b, e, f, m] + 1", READ, "the term of KV does not vary with 'm'"),
        (PLAIN, "exp(KV[b, e, f, m + 1]) * FQ[b, m, e] :: sum(e)", "KV passes through exp in SNV"),
        (PLAIN, READ.replace("sum", "max"), "SNV takes the max of a running tensor"),
        (PLAIN, "FQ[b, m, e] * KV[b, e, f, m - 1] :: sum(e)", "KV is read at generation m - 1"),
    ],
    ids=["decay", "max-state", "counter", "exp-read", "max-read", "older-generation"],
)
def test_recurrences_that_are_not_plain_sums_decline(update, read, reason):
    cascade = loads(_recurrence(update, read))
    result = ChunkLinear().run(cascade)
    assert result.cascade == cascade
    assert [n.message for n in result.notes] == [f"iterate m: {reason}"]


def test_online_softmax_loops_and_loop_free_cascades_are_left_alone():
    online = OnlineSoftmax(block=4).run(DeferDiv().run(einscade.softmax_attention()).cascade)
    result = ChunkLinear().run(online.cascade)
    assert result.cascade == online.cascade
    assert "is not linear in RGM[.., m1] (through max)" in result.notes[0].message
    plain = einscade.linear_attention()
    assert [n.message for n in ChunkLinear().run(plain).notes] == ["no 'iterate' block to chunk"]


def test_pipeline_option_sets_the_chunk():
    cascade = einscade.linear_attention(causal=True)
    result = run_pipeline(cascade, "chunk-linear{block=5}", debug=0, dump_dir="")
    assert "size M0 = 5" in print_cascade(result.cascade)
    with pytest.raises(EinscadeError, match="block must be at least 1, got 0"):
        parse_pipeline("chunk-linear{block=0}")
