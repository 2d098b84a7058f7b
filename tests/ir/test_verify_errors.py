"""The verifier rejects each broken rule with the exact message and place, and accepts the
forms the attention library relies on (grids, lets, lookups in predicates, GQA indexing)."""

from __future__ import annotations

import pytest

from einscade.ir import Cascade, VerifyError, loads, parse, verify

HEAD = "cascade @t(Q[e, p], K[e, m]) -> (O) {\n"
ITER = "cascade @t(K[e, m]) -> (O) {\n  iterate m {\n    R[0, e] = 0\n"


def message(*lines: str) -> str:
    """An error message: the ``file:line:col: text`` head, the source line, the caret line."""
    return "\n".join(lines)


def body(*lines: str) -> str:
    """A cascade over Q[e, p] and K[e, m] with output O and the given statement lines."""
    return HEAD + "".join(f"  {line}\n" for line in lines) + "}\n"


def loop(*lines: str) -> str:
    """A cascade whose ``iterate m`` block starts with ``R[0, e] = 0`` and goes on with lines."""
    inner = "".join(f"    {line}\n" for line in lines)
    return ITER + inner + "  }\n  O[e] = R[M, e]\n}\n"


CASES = [
    (
        "undefined_tensor",
        body("O[p] = X[p]"),
        message(
            "t.ecas:2:10: undefined tensor 'X'",
            "    O[p] = X[p]",
            "           ^",
        ),
    ),
    (
        "defined_twice",
        body("O[p] = Q[e, p] :: sum(e)", "O[p] = Q[e, p] :: max(e)"),
        message(
            "t.ecas:3:3: tensor 'O' is defined twice",
            "    O[p] = Q[e, p] :: max(e)",
            "    ^",
        ),
    ),
    (
        "wrong_index_count",
        body("O[p] = Q[p] :: sum(e)"),
        message(
            "t.ecas:2:10: tensor 'Q' has 2 ranks [e, p], accessed with 1 indices",
            "    O[p] = Q[p] :: sum(e)",
            "           ^",
        ),
    ),
    (
        "neither_kept_nor_reduced",
        body("O[p] = Q[e, p]"),
        message(
            "t.ecas:2:3: rank 'e' is neither kept in O[...] nor reduced",
            "    O[p] = Q[e, p]",
            "    ^",
        ),
    ),
    (
        "reduction_over_missing_rank",
        body("O[p] = Q[e, p] :: sum(e, m)"),
        message(
            "t.ecas:2:3: reduction over rank 'm' that the operand does not have",
            "    O[p] = Q[e, p] :: sum(e, m)",
            "    ^",
        ),
    ),
    (
        "kept_and_reduced",
        body("O[e, p] = Q[e, p] :: sum(e)"),
        message(
            "t.ecas:2:3: rank 'e' is both kept in O and reduced",
            "    O[e, p] = Q[e, p] :: sum(e)",
            "    ^",
        ),
    ),
    (
        "predicate_over_unknown_rank",
        body("O[p] = Q[e, p] :: sum(e) if z <= p"),
        message(
            "t.ecas:2:31: predicate over unknown rank 'z'",
            "    O[p] = Q[e, p] :: sum(e) if z <= p",
            "                                ^",
        ),
    ),
    (
        "predicate_outside_iteration_space",
        body("O[p] = Q[e, p] :: sum(e) if m <= p"),
        message(
            "t.ecas:2:3: predicate over rank 'm' outside the iteration space",
            "    O[p] = Q[e, p] :: sum(e) if m <= p",
            "    ^",
        ),
    ),
    (
        "predicate_not_boolean",
        body("O[p] = Q[e, p] :: sum(e) if p - e"),
        message(
            "t.ecas:2:3: predicate must be a comparison, got 'p - e'",
            "    O[p] = Q[e, p] :: sum(e) if p - e",
            "    ^",
        ),
    ),
    (
        "unknown_name_in_value",
        body("O[p] = Q[e, p] * scale :: sum(e)"),
        message(
            "t.ecas:2:20: unknown name 'scale'",
            "    O[p] = Q[e, p] * scale :: sum(e)",
            "                     ^",
        ),
    ),
    (
        "float_literal_in_index",
        body("O[p] = Q[e, p + 1.0] :: sum(e)"),
        message(
            "t.ecas:2:19: index expression needs integers, got 1.0",
            "    O[p] = Q[e, p + 1.0] :: sum(e)",
            "                    ^",
        ),
    ),
    (
        "slash_in_index",
        body("O[p] = Q[e, p / 2] :: sum(e)"),
        message(
            "t.ecas:2:17: index expressions divide with '//', not '/'",
            "    O[p] = Q[e, p / 2] :: sum(e)",
            "                  ^",
        ),
    ),
    (
        "float_param_in_index",
        body("param shift: float", "O[p] = Q[e, p + shift] :: sum(e)"),
        message(
            "t.ecas:3:19: index expression needs integers, got float param 'shift'",
            "    O[p] = Q[e, p + shift] :: sum(e)",
            "                    ^",
        ),
    ),
    (
        "map_function_in_index",
        body("O[p] = Q[e, exp(p)] :: sum(e)"),
        message(
            "t.ecas:2:15: exp() is not allowed in an index expression",
            "    O[p] = Q[e, exp(p)] :: sum(e)",
            "                ^",
        ),
    ),
    (
        "lookup_of_computed_tensor",
        body("S[p] = Q[e, p] :: sum(e)", "O[p] = Q[e, p] :: sum(e) if S[p] > 0"),
        message(
            "t.ecas:3:31: index lookup 'S' must be an input tensor",
            "    O[p] = Q[e, p] :: sum(e) if S[p] > 0",
            "                                ^",
        ),
    ),
    (
        "logical_operator_in_value",
        body("O[p] = Q[e, p] and Q[e, p] :: sum(e)"),
        message(
            "t.ecas:2:18: 'and' belongs in a predicate or where()",
            "    O[p] = Q[e, p] and Q[e, p] :: sum(e)",
            "                   ^",
        ),
    ),
    (
        "where_without_comparison",
        body("O[p] = where(Q[e, p], Q[e, p], 0) :: sum(e)"),
        message(
            "t.ecas:2:16: where() needs a comparison, got 'Q[e, p]'",
            "    O[p] = where(Q[e, p], Q[e, p], 0) :: sum(e)",
            "                 ^",
        ),
    ),
    (
        "output_not_defined",
        body("S[p] = Q[e, p] :: sum(e)"),
        message(
            "t.ecas:1:1: output 'O' is not defined by any statement",
            "  cascade @t(Q[e, p], K[e, m]) -> (O) {",
            "  ^",
        ),
    ),
    (
        "output_is_an_input",
        "cascade @t(Q[e, p]) -> (Q) {\n  O[p] = Q[e, p] :: sum(e)\n}\n",
        message(
            "t.ecas:1:1: output 'Q' is an input, not a computed tensor",
            "  cascade @t(Q[e, p]) -> (Q) {",
            "  ^",
        ),
    ),
    (
        "lhs_index_not_a_rank",
        body("O[p + 1] = Q[e, p] :: sum(e)"),
        message(
            "t.ecas:2:3: O[...] must be indexed by plain rank names",
            "    O[p + 1] = Q[e, p] :: sum(e)",
            "    ^",
        ),
    ),
    (
        "iterative_never_updated",
        "cascade @t(K[e, m]) -> (O) {\n  iterate m {\n    R[0, e] = 0\n  }\n  O[e] = K[e, 0]\n}\n",
        message(
            "t.ecas:2:3: iterative tensor 'R' is never updated",
            "    iterate m {",
            "    ^",
        ),
    ),
    (
        "iterative_updated_before_init",
        "cascade @t(K[e, m]) -> (O) {\n  iterate m {\n    R[m + 1, e] = K[e, m]\n  }\n"
        "  O[e] = R[M, e]\n}\n",
        message(
            "t.ecas:3:5: R is updated before its generation 0",
            "      R[m + 1, e] = K[e, m]",
            "      ^",
        ),
    ),
    (
        "iterative_updated_twice",
        loop("R[m + 1, e] = R[m, e] + K[e, m]", "R[m + 1, e] = R[m, e]"),
        message(
            "t.ecas:5:5: R is updated twice in 'iterate m'",
            "      R[m + 1, e] = R[m, e]",
            "      ^",
        ),
    ),
    (
        "iterative_next_generation_read_early",
        loop("X[m, e] = R[m + 1, e] * 2", "R[m + 1, e] = R[m, e] + K[e, m]"),
        message(
            "t.ecas:4:15: R[...] reads generation 'm + 1' before its update",
            "      X[m, e] = R[m + 1, e] * 2",
            "                ^",
        ),
    ),
    (
        "iterative_init_reads_rank",
        "cascade @t(K[e, m]) -> (O) {\n  iterate m {\n    R[0, e] = K[e, m]\n"
        "    R[m + 1, e] = R[m, e] + K[e, m]\n  }\n  O[e] = R[M, e]\n}\n",
        message(
            "t.ecas:3:5: generation 0 of R reads 'm'",
            "      R[0, e] = K[e, m]",
            "      ^",
        ),
    ),
    (
        "body_statement_without_iterate_rank",
        loop("S[e] = K[e, 0]", "R[m + 1, e] = R[m, e] + K[e, m]"),
        message(
            "t.ecas:4:5: S[...] inside 'iterate m' must carry rank 'm' or a generation index",
            "      S[e] = K[e, 0]",
            "      ^",
        ),
    ),
    (
        "param_clashes_with_rank",
        body("param m: int", "O[p] = Q[e, p] :: sum(e)"),
        message(
            "t.ecas:2:3: param 'm' clashes with rank 'm'",
            "    param m: int",
            "    ^",
        ),
    ),
    (
        "param_clashes_with_rank_size",
        body("param M: int", "O[p] = Q[e, p] :: sum(e)"),
        message(
            "t.ecas:2:3: param 'M' clashes with the size of rank 'm'",
            "    param M: int",
            "    ^",
        ),
    ),
    (
        "let_clashes_with_rank",
        body("let p = e + 1", "O[p] = Q[e, p] :: sum(e)"),
        message(
            "t.ecas:2:3: let 'p' clashes with rank 'p'",
            "    let p = e + 1",
            "    ^",
        ),
    ),
    (
        "uppercase_rank",
        "cascade @t(Q[E, p]) -> (O) {\n  O[p] = Q[E, p] :: sum(E)\n}\n",
        message(
            "t.ecas:1:12: rank 'E' must be lowercase (its size symbol is 'E')",
            "  cascade @t(Q[E, p]) -> (O) {",
            "             ^",
        ),
    ),
    (
        "size_reads_a_rank",
        body("size W = p", "O[p] = Q[e, p] :: sum(e)"),
        message(
            "t.ecas:2:12: unknown size or parameter 'p'",
            "    size W = p",
            "             ^",
        ),
    ),
    (
        "grid_axes_on_lhs_but_flat_rank_read",
        "cascade @t(X[p]) -> (O) {\n  grid p = (px, py)\n  O[px, py] = X[p]\n}\n",
        message(
            "t.ecas:3:3: rank 'p' is neither kept in O[...] nor reduced",
            "    O[px, py] = X[p]",
            "    ^",
        ),
    ),
    (
        "grid_with_one_axis",
        "cascade @t(Q[p, e]) -> (O) {\n  grid p = (px)\n  O[p] = Q[p, e] :: sum(e)\n}\n",
        message(
            "t.ecas:2:3: grid 'p' needs two or more distinct axes",
            "    grid p = (px)",
            "    ^",
        ),
    ),
]


@pytest.mark.parametrize(("source", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verify_error_message(source: str, message: str) -> None:
    parse(source, "t.ecas")  # each case is well formed text: only the verifier objects
    with pytest.raises(VerifyError) as info:
        loads(source, "t.ecas")
    assert str(info.value) == message


def test_verify_without_source_still_names_the_place() -> None:
    cascade = parse(body("O[p] = X[p]"), "t.ecas")
    with pytest.raises(VerifyError) as info:
        verify(cascade)
    assert str(info.value) == "t.ecas:2:10: undefined tensor 'X'"


ACCEPTED = {
    "gqa_causal_softmax": """
cascade @gqa(Q[b, h, p, e], K[b, hk, m, e], V[b, hk, m, f]) -> (AV) {
  size G = H // HK
  param scale: float = 1 / sqrt(E)
  QK[b, h, m, p] = Q[b, h, p, e] * K[b, h // G, m, e] :: sum(e) if m <= p
  S[b, h, m, p] = QK[b, h, m, p] * scale
  GM[b, h, p] = S[b, h, m, p] :: max(m)
  SN[b, h, m, p] = exp(S[b, h, m, p] - GM[b, h, p])
  SD[b, h, p] = SN[b, h, m, p] :: sum(m)
  A[b, h, m, p] = SN[b, h, m, p] / SD[b, h, p]
  AV[b, h, p, f] = A[b, h, m, p] * V[b, h // G, m, f] :: sum(m)
}
""",
    "grid_with_lets": """
cascade @na2d(Q[b, p, e], K[b, m, e]) -> (QK) {
  size PX = 8
  size PY = 8
  size MX = 8
  size MY = 8
  param w: int = 1
  grid p = (px, py)
  grid m = (mx, my)
  let dx = px - mx
  let dy = py - my
  QK[b, m, p] = Q[b, p, e] * K[b, m, e] :: sum(e) if abs(dx) <= w and abs(dy) <= w
}
""",
    "document_mask_lookup": """
cascade @doc(Q[b, p, e], K[b, m, e], doc[b, m]) -> (QK) {
  QK[b, m, p] = Q[b, p, e] * K[b, m, e] :: sum(e) if doc[b, m] == doc[b, p] and m <= p
}
""",
    "heads_last_grid_axes": """
cascade @heads_last(Q[b, px, py, h, e], K[b, mx, my, h, e]) -> (QK, O) {
  grid p = (px, py)
  grid m = (mx, my)
  QK[b, h, m, p] = Q[b, px, py, h, e] * K[b, mx, my, h, e] :: sum(e) if abs(px - mx) <= 1
  O[b, px, py, h] = Q[b, px, py, h, e] :: sum(e) if px <= py
}
""",
    "rank_coordinate_in_value": """
cascade @alibi(QK[h, m, p], slope[h]) -> (S) {
  S[h, m, p] = QK[h, m, p] + slope[h] * (m - p)
}
""",
    "where_with_logic": """
cascade @softcap(QK[m, p]) -> (S) {
  param cap: float = 30.0
  S[m, p] = where(m <= p and not (QK[m, p] < 0), cap * tanh(QK[m, p] / cap), -inf)
}
""",
    "tiled_key_index": """
cascade @tiles(K[e, m]) -> (KS) {
  size M0 = 16
  size M1 = (M + M0 - 1) // M0
  KS[m1, m0] = K[e, m1 * M0 + m0] :: sum(e)
}
""",
}


@pytest.mark.parametrize("source", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_verifier_accepts(source: str) -> None:
    assert isinstance(loads(source, "t.ecas"), Cascade)


def test_iterative_tensor_reads_any_generation_after_the_loop() -> None:
    source = loop("R[m + 1, e] = R[m, e] + K[e, m]", "X[m, e] = R[m + 1, e] - R[m, e]")
    cascade = loads(source.replace("O[e] = R[M, e]", "O[e] = R[M, e] + R[M // 2, e]"))
    assert cascade.outputs == ("O",)
