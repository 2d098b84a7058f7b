"""dce: removes exactly the tensors no output needs, keeps numbers and iterate blocks intact.

Line-by-line IR cases live in tests/passes/ir/dce_*.ecas; these tests cover the rest.
"""

import re

import pytest
import torch

import einscade.passes.dce as dce_module
from einscade.codegen.reference import reference
from einscade.compiler.pipeline import fixpoint
from einscade.frontends.library import BUILTINS
from einscade.ir import loads, print_cascade
from einscade.passes.base import REGISTRY
from einscade.passes.dce import DeadCode, live_tensors, reads

ONLINE_WITH_DEAD = """
cascade @online(Q[e, p], K[e, m], V[f, m]) -> (AV) {
  size M0 = 4
  size M1 = (M + M0 - 1) // M0
  iterate m1 {
    RM[0, p] = -inf
    RD[0, p] = 0
    RNV[f, 0, p] = 0
    RS[0, p] = 0
    BQK[m1, m0, p] = Q[e, p] * K[e, m1 * M0 + m0] :: sum(e)
    LM[m1, p] = BQK[m1, m0, p] :: max(m0)
    RM[m1 + 1, p] = max(RM[m1, p], LM[m1, p])
    RS[m1 + 1, p] = RS[m1, p] + LM[m1, p]
    SLN[m1, m0, p] = exp(BQK[m1, m0, p] - RM[m1 + 1, p])
    SLD[m1, p] = SLN[m1, m0, p] :: sum(m0)
    SLNV[f, m1, p] = SLN[m1, m0, p] * V[f, m1 * M0 + m0] :: sum(m0)
    PRM[m1, p] = exp(RM[m1, p] - RM[m1 + 1, p])
    RD[m1 + 1, p] = SLD[m1, p] + RD[m1, p] * PRM[m1, p]
    RNV[f, m1 + 1, p] = SLNV[f, m1, p] + RNV[f, m1, p] * PRM[m1, p]
  }
  DEAD[p] = RS[M1, p] + RM[M1, p]
  AV[f, p] = RNV[f, M1, p] / RD[M1, p]
}
"""


def _docstring_blocks() -> list[str]:
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", dce_module.__doc__ or "")
    return ["\n".join(line[4:] for line in b.strip("\n").splitlines()) + "\n" for b in blocks]


def test_the_module_docstring_example_is_what_the_pass_does():
    before, after = _docstring_blocks()
    result = DeadCode().run(loads(before))
    assert print_cascade(result.cascade) == after
    assert result.rewrites == 3


def test_dce_is_registered_under_its_spec_name():
    assert REGISTRY["dce"] is DeadCode
    assert DeadCode().spec() == "dce"


def test_removal_keeps_the_numbers():
    before = loads(ONLINE_WITH_DEAD)
    after = DeadCode().run(before).cascade
    assert {s.target for s in after.einsums()} == {s.target for s in before.einsums()} - {
        "RS",
        "DEAD",
    }
    g = torch.Generator().manual_seed(0)
    tensors = {
        "Q": torch.randn(5, 3, generator=g, dtype=torch.float64),
        "K": torch.randn(5, 10, generator=g, dtype=torch.float64),  # M = 10: a ragged last tile
        "V": torch.randn(2, 10, generator=g, dtype=torch.float64),
    }
    torch.testing.assert_close(reference(after, **tensors), reference(before, **tensors))


def test_notes_name_each_removed_tensor_once_with_its_statement_count():
    result = DeadCode().run(loads(ONLINE_WITH_DEAD))
    assert [n.kind for n in result.notes] == ["rewrite", "rewrite"]
    assert [n.message for n in result.notes] == [
        "removed RS (2 Einsums in iterate m1): no path to output AV",
        "removed DEAD (1 Einsum): no path to output AV",
    ]


def test_a_tensor_only_a_second_output_reads_stays():
    source = """
    cascade @two(X[n]) -> (A, B) {
      T[n] = exp(X[n])
      U[] = T[n] :: sum(n)
      A[n] = X[n] * 2
      B[] = U[] + 1
      C[] = U[] * 3
    }
    """
    cascade = loads(source)
    assert live_tensors(cascade) == {"X", "T", "U", "A", "B"}
    result = DeadCode().run(cascade)
    assert [s.target for s in result.cascade.einsums()] == ["T", "U", "A", "B"]
    assert result.notes[0].message == "removed C (1 Einsum): no path to outputs A, B"


def test_reads_cover_values_predicates_and_lookups_in_indices():
    cascade = loads(
        "cascade @a(X[n], idx[n], doc[n]) -> (Y) {\n  Y[n] = X[idx[n]] if doc[n] == 0\n}\n"
    )
    assert reads(cascade.einsums()[0]) == {"X", "idx", "doc"}


def test_unchanged_input_comes_back_as_the_same_object():
    cascade = loads(print_cascade(DeadCode().run(loads(ONLINE_WITH_DEAD)).cascade))
    result = DeadCode().run(cascade)
    assert result.cascade is cascade
    assert result.notes == ()


def test_the_input_is_not_mutated_and_one_run_reaches_the_fixpoint():
    cascade = loads(ONLINE_WITH_DEAD)
    text = print_cascade(cascade)
    once = DeadCode().run(cascade)
    assert print_cascade(cascade) == text
    assert fixpoint(DeadCode(), cascade).cascade == once.cascade


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtins_have_no_dead_code(name):
    cascade = BUILTINS[name].build()
    assert DeadCode().run(cascade).cascade is cascade
