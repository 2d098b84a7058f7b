"""Printing an expression and parsing it back gives the same tree, with minimal parentheses.

The random trees cover every node kind, every binary operator and every map function, so
this is the test that pins down precedence, left-associativity and the unary-minus rules of
``print_expr``. Equality is checked strictly: ``Num(1)`` and ``Num(1.0)`` differ here, and so
do ``-0.0`` and ``0.0``, although the dataclasses compare them equal.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.ir import (
    Access,
    Binary,
    Call,
    Expr,
    Name,
    Num,
    ParseError,
    Unary,
    ops,
    parse_expr,
    print_expr,
)

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,6}")

identifiers = st.from_regex(IDENT, fullmatch=True).filter(lambda s: s not in ops.KEYWORDS)
ints = st.integers(min_value=-(10**12), max_value=10**12).map(Num)
floats = st.floats(allow_nan=False).map(Num)  # inf, -inf, -0.0 and subnormals too
leaves = st.one_of(ints, floats, identifiers.map(Name))


def _grow(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    """One level of interior nodes over ``children``."""
    unary = st.builds(Unary, st.sampled_from(["-", "not"]), children)
    binary = st.builds(Binary, st.sampled_from(sorted(ops.BINARY_PRECEDENCE)), children, children)
    call = st.sampled_from(sorted(ops.MAP_FUNCTIONS)).flatmap(
        lambda fn: st.tuples(*[children] * ops.MAP_FUNCTIONS[fn]).map(lambda a: Call(fn, a))
    )
    access = st.builds(Access, identifiers, st.lists(children, min_size=1, max_size=3).map(tuple))
    return st.one_of(unary, binary, call, access)


def _operators(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    unary = st.builds(Unary, st.sampled_from(["-", "not"]), children)
    binary = st.builds(Binary, st.sampled_from(sorted(ops.BINARY_PRECEDENCE)), children, children)
    return st.one_of(unary, binary)


# Every node kind with arbitrary names and numbers.
general = st.recursive(leaves, _grow, max_leaves=12)
# Operators only, over a few short leaves: far more nested operators of equal precedence,
# which is where associativity and parenthesis bugs live.
small_leaves = st.one_of(
    st.sampled_from("abc").map(Name),
    st.integers(min_value=-3, max_value=3).map(Num),
    st.sampled_from([0.5, -0.0, float("inf"), float("-inf")]).map(Num),
)
operator_trees = st.recursive(small_leaves, _operators, max_leaves=8)
expressions = st.one_of(general, operator_trees)


def strict(expr: Expr) -> tuple:
    """A nested tuple that tells apart everything the text form must preserve."""
    match expr:
        case Num(value=v):
            return ("num", type(v).__name__, repr(v))
        case Name(id=name):
            return ("name", name)
        case Access(tensor=t, indices=idx):
            return ("access", t, tuple(strict(i) for i in idx))
        case Unary(op=op, operand=x):
            return ("unary", op, strict(x))
        case Binary(op=op, lhs=a, rhs=b):
            return ("binary", op, strict(a), strict(b))
        case Call(fn=fn, args=args):
            return ("call", fn, tuple(strict(a) for a in args))
    raise TypeError(expr)


def paren_pairs(text: str) -> list[tuple[int, int]]:
    """Positions of every matching ``(`` ``)`` pair in ``text``."""
    stack, pairs = [], []
    for pos, char in enumerate(text):
        if char == "(":
            stack.append(pos)
        elif char == ")":
            pairs.append((stack.pop(), pos))
    return pairs


def parses_to(text: str) -> tuple | None:
    try:
        return strict(parse_expr(text))
    except ParseError:
        return None


@settings(max_examples=600)
@given(expressions)
def test_print_then_parse_is_identity(expr: Expr) -> None:
    text = print_expr(expr)
    assert strict(parse_expr(text)) == strict(expr), text
    assert parse_expr(text) == expr


@settings(max_examples=600)
@given(expressions)
def test_every_parenthesis_is_needed(expr: Expr) -> None:
    """Dropping any one pair of parentheses changes the tree or breaks the parse.

    The one deliberate exception is a unary minus applied to a negative operand: ``-(-x)``
    reads better than ``--x`` and both parse to the same tree.
    """
    text = print_expr(expr)
    for open_, close in paren_pairs(text):
        if open_ > 0 and text[open_ - 1] == "-" and text[open_ + 1] == "-":
            continue
        dropped = text[:open_] + text[open_ + 1 : close] + text[close + 1 :]
        assert parses_to(dropped) != strict(expr), f"redundant parentheses in {text!r}"


a, b, c, x, y = (Name(n) for n in "abcxy")

PRINTED = [
    (Binary("-", a, Binary("-", b, c)), "a - (b - c)"),
    (Binary("-", Binary("-", a, b), c), "a - b - c"),
    (Binary("//", a, Binary("*", b, c)), "a // (b * c)"),
    (Binary("*", Binary("+", a, b), c), "(a + b) * c"),
    (Unary("-", Num(2)), "-(2)"),
    (Num(-2), "-2"),
    (Unary("-", Num(-2)), "-(-2)"),
    (Num(float("-inf")), "-inf"),
    (Unary("-", Num(float("inf"))), "-(inf)"),
    (Binary("*", Unary("-", x), y), "-x * y"),
    (Unary("-", Binary("*", x, y)), "-(x * y)"),
    (Binary("-", x, Num(-1)), "x - -1"),
    (Binary("-", x, Unary("-", y)), "x - -y"),
    (Binary("or", Binary("and", a, b), c), "a and b or c"),
    (Binary("and", a, Binary("or", b, c)), "a and (b or c)"),
    (Binary("and", Unary("not", a), b), "not a and b"),
    (Unary("not", Binary("and", a, b)), "not (a and b)"),
    (Unary("not", Binary("<", a, b)), "not a < b"),
    (Binary("<", Unary("not", a), b), "(not a) < b"),
    (Binary("<=", Binary("+", a, Num(1)), Binary("*", b, c)), "a + 1 <= b * c"),
    (Binary("<", Binary("<", a, b), c), "(a < b) < c"),
    (Binary("==", a, Binary("!=", b, c)), "a == (b != c)"),
    (Call("max", (Binary("-", a, b), Num(0.5))), "max(a - b, 0.5)"),
    (Access("K", (Name("b"), Binary("//", Name("h"), Name("G")))), "K[b, h // G]"),
]


@pytest.mark.parametrize(("expr", "text"), PRINTED, ids=[t for _, t in PRINTED])
def test_printed_form(expr: Expr, text: str) -> None:
    assert print_expr(expr) == text
    assert strict(parse_expr(text)) == strict(expr)


def test_chained_comparison_is_rejected_but_parenthesized_one_is_not() -> None:
    with pytest.raises(ParseError, match="comparisons do not chain"):
        parse_expr("a < b < c")
    assert parse_expr("(a < b) < c") == Binary("<", Binary("<", a, b), c)
