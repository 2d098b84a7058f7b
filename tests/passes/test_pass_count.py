"""pass_count reproduces FuseMax's 3/2/1 passes and finds the tensors live across passes."""

from pathlib import Path

import pytest

from einscade.ir import load, loads
from einscade.passes.analysis import LiveTensor, pass_count, rank_family

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(passes: int):
    return load(EXAMPLES / f"attention_{passes}pass.ecas")


def test_three_pass_softmax_attention():
    report = pass_count(example(3))
    assert report.passes == 3
    assert report.statement_pass == {"QK": 1, "GM": 1, "SN": 2, "SD": 2, "A": 3, "AV": 3}
    assert report.availability == {
        "Q": 0, "K": 0, "V": 0, "QK": 1, "GM": 1.5, "SN": 2, "SD": 2.5, "A": 3, "AV": 3.5,
    }  # fmt: skip
    assert report.live_across == (LiveTensor("QK", 1, (2,)), LiveTensor("SN", 2, (3,)))


def test_two_pass_defers_the_division():
    report = pass_count(example(2))
    assert report.passes == 2
    assert report.statement_pass["SNV"] == 2
    assert report.statement_pass["AV"] is None  # AV[f, p] = SNV / SD never walks m
    assert report.availability["AV"] == 2.5
    assert report.live_across == (LiveTensor("QK", 1, (2,)),)


def test_one_pass_online_softmax():
    report = pass_count(example(1))
    assert report.passes == 1
    assert report.family == ("m", "m0", "m1")
    assert set(p for p in report.statement_pass.values()) == {1, None}
    assert report.statement_pass["AV"] is None
    # LM reduces m0 but keeps m1: tile-local, so it still streams.
    assert report.availability["LM"] == 1
    # Running tensors read after the loop (RNV[f, M1, p]) are complete.
    assert report.availability["RNV"] == report.availability["AV"] == 1.5
    assert report.live_across == ()


def test_str_is_a_readable_table():
    text = str(pass_count(example(3)))
    lines = text.splitlines()
    assert lines[0] == "passes over m (family m): 3"
    assert lines[1].split() == ["tensor", "pass", "available"]
    assert lines[6].split() == ["GM", "1", "1.5"]
    assert lines[-2:] == [
        "  QK: produced in pass 1, read in pass 2",
        "  SN: produced in pass 2, read in pass 3",
    ]


def test_cascade_that_never_touches_m_needs_no_pass():
    cascade = loads(
        """
        cascade @mlp(X[p, e], W[e, f]) -> (Z) {
          Y[p, f] = X[p, e] * W[e, f] :: sum(e)
          Z[p] = Y[p, f] :: max(f)
        }
        """
    )
    report = pass_count(cascade)
    assert report.passes == 0
    assert report.statement_pass == {"Y": None, "Z": None}
    assert set(report.availability.values()) == {0}
    assert report.live_across == ()
    assert str(report).splitlines()[0] == "passes over m (family m): 0"


CAUSAL_LINEAR = """
cascade @causal_linear(Q[e, m], K[e, m], V[f, m]) -> (AV) {
  iterate m {
    S[e, f, 0] = 0
    Z[e, 0] = 0
    FQ[e, m] = elu(Q[e, m]) + 1
    FK[e, m] = elu(K[e, m]) + 1
    S[e, f, m + 1] = S[e, f, m] + FK[e, m] * V[f, m]
    Z[e, m + 1] = Z[e, m] + FK[e, m]
    NUM[f, m] = FQ[e, m] * S[e, f, m + 1] :: sum(e)
    DEN[m] = FQ[e, m] * Z[e, m + 1] :: sum(e)
    AV[f, m] = NUM[f, m] / DEN[m]
  }
}
"""


def test_causal_linear_attention_as_iterate_m_is_one_pass():
    report = pass_count(loads(CAUSAL_LINEAR))
    assert report.passes == 1
    assert set(report.statement_pass.values()) == {1}
    assert report.live_across == ()


TWO_STAGE = """
cascade @two_stage(S[a, m], V[m, f]) -> (Y) {
  GM[a] = S[a, m] :: max(m)
  SN[a, m] = exp(S[a, m] - GM[a])
  SD[a] = SN[a, m] :: sum(m)
  SNV[a, f] = SN[a, m] * V[m, f] :: sum(m)
  H[a, f] = SNV[a, f] / SD[a]
  HM[f] = H[a, f] :: max(a)
  HN[a, f] = exp(H[a, f] - HM[f])
  HD[f] = HN[a, f] :: sum(a)
  Y[a, f] = HN[a, f] / HD[f]
}
"""


def test_two_stage_cascade_counts_each_rank_separately():
    cascade = loads(TWO_STAGE)
    over_m = pass_count(cascade, "m")
    assert over_m.passes == 2  # the 2-pass softmax over m
    assert [over_m.statement_pass[t] for t in ("GM", "SN", "SNV", "H", "HM", "Y")] == [
        1, 2, 2, None, None, None,
    ]  # fmt: skip
    assert over_m.availability["Y"] == 2.5
    assert over_m.live_across == ()

    over_a = pass_count(cascade, "a")
    assert over_a.passes == 3  # the 3-pass softmax over a; stage one streams along a
    assert [over_a.statement_pass[t] for t in ("GM", "H", "HM", "HN", "HD", "Y")] == [
        1, 1, 1, 2, 2, 3,
    ]  # fmt: skip
    assert over_a.live_across == (LiveTensor("H", 1, (2,)), LiveTensor("HN", 2, (3,)))


def test_tile_local_reduction_does_not_complete_the_pass():
    cascade = loads(
        """
        cascade @tiled(Q[e, p], K[e, m]) -> (SN) {
          size M0 = 4
          size M1 = (M + M0 - 1) // M0
          BQK[m1, m0, p] = Q[e, p] * K[e, m1 * M0 + m0] :: sum(e)
          LM[m1, p] = BQK[m1, m0, p] :: max(m0)
          GM[p] = LM[m1, p] :: max(m1)
          SN[m1, m0, p] = exp(BQK[m1, m0, p] - GM[p])
        }
        """
    )
    report = pass_count(cascade)
    assert report.availability["LM"] == 1
    assert report.availability["GM"] == 1.5
    assert report.passes == 2
    assert report.live_across == (LiveTensor("BQK", 1, (2,)),)


def test_a_loop_over_the_rank_is_one_traversal():
    cascade = loads(
        """
        cascade @loop_after_max(Q[e, p], K[e, m], V[f, m]) -> (Z, BV) {
          size M0 = 4
          size M1 = (M + M0 - 1) // M0
          QK[m, p] = Q[e, p] * K[e, m] :: sum(e)
          GM[p] = QK[m, p] :: max(m)
          iterate m1 {
            RD[0, p] = 0
            BV[f, m1, m0] = V[f, m1 * M0 + m0]
            SN[m1, m0, p] = exp(QK[m1 * M0 + m0, p] - GM[p])
            SD[m1, p] = SN[m1, m0, p] :: sum(m0)
            RD[m1 + 1, p] = RD[m1, p] + SD[m1, p]
          }
          Z[p] = RD[M1, p]
        }
        """
    )
    report = pass_count(cascade)
    assert report.passes == 2
    # BV reads only inputs, yet runs in the loop's single traversal: pass 2, not 1.
    assert report.statement_pass["BV"] == report.statement_pass["RD"] == 2
    assert report.availability["RD"] == report.availability["Z"] == 2.5
    assert report.live_across == (LiveTensor("QK", 1, (2,)),)


def test_family_grows_through_index_expressions_to_a_fixed_point():
    cascade = loads(
        """
        cascade @nested(Q[e, p], K[e, m]) -> (T) {
          size M0 = 4
          size M1 = (M + M0 - 1) // M0
          size M3 = 2
          size M2 = (M1 + M3 - 1) // M3
          BK[e, m1, m0] = K[e, m1 * M0 + m0]
          CK[e, m2, m3, m0] = BK[e, m2 * M3 + m3, m0]
          T[p] = Q[e, p] * CK[e, m2, m3, m0] :: sum(e, m2, m3, m0)
        }
        """
    )
    assert rank_family(cascade) == {"m", "m0", "m1", "m2", "m3"}
    report = pass_count(cascade)
    assert report.statement_pass == {"BK": 1, "CK": 1, "T": 1}
    assert report.availability["T"] == 1.5


def test_grid_axes_belong_to_the_family():
    cascade = loads(
        """
        cascade @grid_keys(Q[e, p], K[e, m]) -> (SD) {
          size MX = 4
          size MY = 4
          grid m = (mx, my)
          QK[m, p] = Q[e, p] * K[e, m] :: sum(e) if mx <= my
          SD[p] = QK[m, p] :: sum(m)
        }
        """
    )
    assert rank_family(cascade) == {"m", "mx", "my"}
    assert pass_count(cascade).passes == 1


@pytest.mark.parametrize("where", ["if doc[m] == doc[p]", ""], ids=["predicate", "where-call"])
def test_mask_lookups_do_not_join_the_query_rank(where: str):
    # doc is declared over m but compared at p: a coordinate test, not a walk of m by p.
    value = "Q[e, p] * K[e, m]" if where else "where(doc[m] == doc[p], Q[e, p] * K[e, m], 0)"
    cascade = loads(
        f"""
        cascade @doc_attention(Q[e, p], K[e, m], V[f, m], doc[m]) -> (AV) {{
          QK[m, p] = {value} :: sum(e) {where}
          GM[p] = QK[m, p] :: max(m)
          SN[m, p] = exp(QK[m, p] - GM[p])
          SD[p] = SN[m, p] :: sum(m)
          A[m, p] = SN[m, p] / SD[p]
          AV[f, p] = A[m, p] * V[f, m] :: sum(m)
        }}
        """
    )
    assert rank_family(cascade) == {"m"}
    assert pass_count(cascade).passes == 3


def test_data_access_through_another_rank_joins_it():
    # A gather of K along the keys by p (K[e, p]) walks m's data with p: p joins the family.
    cascade = loads(
        """
        cascade @self_keys(Q[h, e, p], K[h, e, m]) -> (GM) {
          QK[h, p] = Q[h, e, p] * K[h, e, p] :: sum(e)
          GM[h] = QK[h, p] :: max(p)
        }
        """
    )
    assert rank_family(cascade) == {"m", "p"}
    assert pass_count(cascade).passes == 1
