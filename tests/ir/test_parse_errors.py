"""Malformed ``.ecas`` text fails with the exact place, what was expected, and a caret line."""

from __future__ import annotations

import pytest

from einscade.ir import ParseError, SourceLoc, loads, parse, parse_expr

HEAD = "cascade @t(Q[e, p], K[e, m]) -> (O) {\n"


def message(*lines: str) -> str:
    """An error message: the ``file:line:col: text`` head, the source line, the caret line."""
    return "\n".join(lines)


CASES = [
    (
        "missing_paren",
        HEAD + "  O[p] = Q[e, p] :: sum e)\n}\n",
        message(
            "t.ecas:2:25: expected '(', got 'e'",
            "    O[p] = Q[e, p] :: sum e)",
            "                          ^",
        ),
    ),
    (
        "unknown_function",
        HEAD + "  O[p] = softmax(Q[e, p]) :: sum(e)\n}\n",
        message(
            "t.ecas:2:10: unknown function 'softmax'",
            "    O[p] = softmax(Q[e, p]) :: sum(e)",
            "           ^",
        ),
    ),
    (
        "too_few_arguments",
        HEAD + "  O[p] = max(Q[e, p]) :: sum(e)\n}\n",
        message(
            "t.ecas:2:10: max() takes 2 argument(s), got 1",
            "    O[p] = max(Q[e, p]) :: sum(e)",
            "           ^",
        ),
    ),
    (
        "too_many_arguments",
        HEAD + "  O[p] = exp(Q[e, p], 2) :: sum(e)\n}\n",
        message(
            "t.ecas:2:10: exp() takes 1 argument(s), got 2",
            "    O[p] = exp(Q[e, p], 2) :: sum(e)",
            "           ^",
        ),
    ),
    (
        "bad_reduction",
        HEAD + "  O[p] = Q[e, p] :: mean(e)\n}\n",
        message(
            "t.ecas:2:21: expected a reduction (sum, max, min), got 'mean'",
            "    O[p] = Q[e, p] :: mean(e)",
            "                      ^",
        ),
    ),
    (
        "unexpected_character",
        HEAD + "  O[p] = Q[e, p] ^ 2 :: sum(e)\n}\n",
        message(
            "t.ecas:2:18: unexpected character '^'",
            "    O[p] = Q[e, p] ^ 2 :: sum(e)",
            "                   ^",
        ),
    ),
    (
        "chained_comparison",
        HEAD + "  O[p] = Q[e, p] :: sum(e) if 0 <= e < p\n}\n",
        message(
            "t.ecas:2:38: comparisons do not chain; use 'and'",
            "    O[p] = Q[e, p] :: sum(e) if 0 <= e < p",
            "                                       ^",
        ),
    ),
    (
        "missing_closing_brace",
        HEAD + "  O[p] = Q[e, p] :: sum(e)\n",
        message(
            "t.ecas:2:27: expected '}', got end of input",
            "    O[p] = Q[e, p] :: sum(e)",
            "                            ^",
        ),
    ),
    (
        "text_after_the_cascade",
        HEAD + "  O[p] = Q[e, p] :: sum(e)\n}\nO[p] = 0\n",
        message(
            "t.ecas:4:1: expected end of input after the cascade, got 'O'",
            "  O[p] = 0",
            "  ^",
        ),
    ),
    (
        "param_kind",
        HEAD + "  param scale: double = 0.5\n  O[p] = Q[e, p] :: sum(e)\n}\n",
        message(
            "t.ecas:2:16: expected 'int' or 'float', got 'double'",
            "    param scale: double = 0.5",
            "                 ^",
        ),
    ),
    (
        "missing_at",
        "cascade t(Q[e, p]) -> (O) {\n}\n",
        message(
            "t.ecas:1:9: expected '@', got 't'",
            "  cascade t(Q[e, p]) -> (O) {",
            "          ^",
        ),
    ),
    (
        "missing_equals",
        HEAD + "  O[p] Q[e, p] :: sum(e)\n}\n",
        message(
            "t.ecas:2:8: expected '=', got 'Q'",
            "    O[p] Q[e, p] :: sum(e)",
            "         ^",
        ),
    ),
    (
        "keyword_as_name",
        HEAD + "  param if: int\n}\n",
        message(
            "t.ecas:2:9: expected a parameter name, got 'if'",
            "    param if: int",
            "          ^",
        ),
    ),
    (
        "unclosed_parenthesis",
        HEAD + "  O[p] = (Q[e, p] :: sum(e)\n}\n",
        message(
            "t.ecas:2:19: expected ')', got '::'",
            "    O[p] = (Q[e, p] :: sum(e)",
            "                    ^",
        ),
    ),
    (
        "nested_iterate",
        HEAD + "  iterate m {\n    iterate e {\n    }\n  }\n}\n",
        message(
            "t.ecas:3:5: expected an Einsum or '}', got 'iterate'",
            "      iterate e {",
            "      ^",
        ),
    ),
    (
        "caret_keeps_tabs",
        "cascade @t(Q[e, p]) -> (O) {\n\tO[p] = Q[e, p] :: sum(e) ? 1\n}\n",
        message(
            "t.ecas:2:27: unexpected character '?'",
            "  \tO[p] = Q[e, p] :: sum(e) ? 1",
            "  \t                         ^",
        ),
    ),
]


@pytest.mark.parametrize(("source", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_error_message(source: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        loads(source, "t.ecas")
    assert str(info.value) == message


def test_error_carries_its_location() -> None:
    with pytest.raises(ParseError) as info:
        parse(HEAD + "  O[p] = Q[e, p] :: sum e)\n}\n", "attn.ecas")
    assert info.value.loc == SourceLoc("attn.ecas", 2, 25)
    assert info.value.message == "expected '(', got 'e'"


EXPR_CASES = [
    ("a +", message("<expr>:1:4: expected an expression, got end of input", "  a +", "     ^")),
    ("a b", message("<expr>:1:3: unexpected 'b' after the expression", "  a b", "    ^")),
    ("(a", message("<expr>:1:3: expected ')', got end of input", "  (a", "    ^")),
    ("f(a)", message("<expr>:1:1: unknown function 'f'", "  f(a)", "  ^")),
]


@pytest.mark.parametrize(("source", "message"), EXPR_CASES, ids=[c[0] for c in EXPR_CASES])
def test_parse_expr_error_message(source: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_expr(source)
    assert str(info.value) == message
