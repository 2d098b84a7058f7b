"""Interval reasoning over boxes: soundness against brute force on random predicates,
exactness of the rules the window formulas rely on, and the lookup range tables."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.ir import parse_expr
from einscade.ir.expr import Access, Binary, Call, Name, Num, Unary, names, walk
from einscade.passes.analysis.dense_groups import DENSE_LIMIT
from einscade.passes.analysis.intervals import (
    FALSE,
    TRUE,
    UNKNOWN,
    BoxEvaluator,
    Interval,
    compile_truth,
    compile_value,
    merge_boxes,
)
from einscade.passes.analysis.masks import Axes, LookupTable

DOMAIN = 12  # x (query) and y (key) range over 0..11; the lookup T has 12 entries
LOOKUP = torch.tensor([0, 0, 1, 1, 1, 3, 2, 2, 5, 5, 5, 7])


# -- an independent brute-force evaluator ------------------------------------------------


def _value(expr, env):  # type: ignore[no-untyped-def]
    match expr:
        case Num(value=v):
            return v
        case Name(id=n):
            return env[n]
        case Unary(op="-", operand=x):
            return -_value(x, env)
        case Unary(op="not", operand=x):
            return not _value(x, env)
        case Access(indices=(i,)):
            return int(LOOKUP[_value(i, env)])
        case Call(fn=fn, args=args):
            values = [_value(a, env) for a in args]
            return {"min": min, "max": max, "abs": abs}[fn](*values)
        case Binary(op=op, lhs=a, rhs=b):
            x, y = _value(a, env), _value(b, env)
            return {
                "+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
                "//": lambda: x // y, "%": lambda: x % y, "<": lambda: x < y,
                "<=": lambda: x <= y, ">": lambda: x > y, ">=": lambda: x >= y,
                "==": lambda: x == y, "!=": lambda: x != y, "and": lambda: x and y,
                "or": lambda: x or y,
            }[op]()  # fmt: skip
    raise AssertionError(expr)


# -- strategies -------------------------------------------------------------------------


def _int_exprs(variables: list[str]):  # type: ignore[no-untyped-def]
    leaf = st.one_of(st.sampled_from([Name(v) for v in variables]), st.integers(-6, 6).map(Num))
    return st.recursive(leaf, _extend, max_leaves=5)


def _extend(children):  # type: ignore[no-untyped-def]
    divisor = st.integers(1, 4).map(Num)
    return st.one_of(
        st.tuples(st.sampled_from("+-*"), children, children).map(lambda t: Binary(*t)),
        st.tuples(st.sampled_from(["//", "%"]), children, divisor).map(lambda t: Binary(*t)),
        st.tuples(st.sampled_from(["min", "max"]), children, children).map(
            lambda t: Call(t[0], (t[1], t[2]))
        ),
        children.map(lambda c: Call("abs", (c,))),
        children.map(lambda c: Unary("-", c)),
    )


def _predicates(variables: list[str], flat: list[str]):  # type: ignore[no-untyped-def]
    """Random predicates; lookups ``T[...]`` are indexed by in-range flat coordinates."""
    operands = st.one_of(
        _int_exprs(variables), st.sampled_from([Access("T", (Name(v),)) for v in flat])
    )
    comparisons = st.tuples(
        st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), operands, operands
    ).map(lambda t: Binary(*t))
    return st.recursive(
        comparisons,
        lambda c: st.one_of(
            st.tuples(st.sampled_from(["and", "or"]), c, c).map(lambda t: Binary(*t)),
            c.map(lambda x: Unary("not", x)),
        ),
        max_leaves=4,
    )


int_exprs = _int_exprs(["x", "y"])
predicates = _predicates(["x", "y"], ["x", "y"])


@st.composite
def intervals(draw, lo: int = 0, hi: int = DOMAIN - 1):  # type: ignore[no-untyped-def]
    a = draw(st.integers(lo, hi))
    return Interval(a, draw(st.integers(a, hi)))


def _points(interval: Interval) -> range:
    return range(interval.lo, interval.hi + 1)


def _evaluator(predicate, split_limit: int, dense_limit: int) -> BoxEvaluator:  # type: ignore[no-untyped-def]
    tables = {"T": LookupTable("T", LOOKUP)}
    axes = Axes("x", ("x",), (DOMAIN,)), Axes("y", ("y",), (DOMAIN,))
    return BoxEvaluator(predicate, *axes, tables, split_limit, dense_limit)


# Evaluators run with interval reasoning alone (0) and with dense group tables (the default).
DENSE_LIMITS = st.sampled_from([0, DENSE_LIMIT])


# -- soundness ---------------------------------------------------------------------------


@given(int_exprs, intervals(-8, 8), intervals(-8, 8))
@settings(max_examples=300)
def test_integer_expressions_contain_every_value(expr, x, y) -> None:
    value = compile_value(expr, {})({"x": x, "y": y})
    for px, py in itertools.product(_points(x), _points(y)):
        assert value.lo <= _value(expr, {"x": px, "y": py}) <= value.hi


@given(predicates, intervals(), intervals(), st.sampled_from([0, 4, 16]), DENSE_LIMITS)
@settings(max_examples=300)
def test_truth_and_key_region_are_sound(predicate, qbox, kbox, split_limit, dense) -> None:  # type: ignore[no-untyped-def]
    evaluator = _evaluator(predicate, split_limit, dense)
    truth = evaluator.truth([(qbox,)], [(kbox,)])
    values = [
        bool(_value(predicate, {"x": x, "y": y}))
        for x, y in itertools.product(_points(qbox), _points(kbox))
    ]
    assert truth != TRUE or all(values)
    assert truth != FALSE or not any(values)
    region = evaluator.key_region([(qbox,)])
    for y in range(DOMAIN):
        if any(_value(predicate, {"x": x, "y": y}) for x in _points(qbox)):
            assert any(box[0].lo <= y <= box[0].hi for box in region), (y, region)


GRID_PREDICATES = _predicates(["px", "py", "p", "mx", "my", "m"], ["p", "m"])


GRID_BOXES = st.tuples(intervals(0, 2), intervals(0, 3))


@given(GRID_PREDICATES, GRID_BOXES, GRID_BOXES, st.sampled_from([0, 16]), DENSE_LIMITS)
@settings(max_examples=200)
def test_grid_coordinates_and_flat_ranks_are_sound(
    predicate, qbox, kbox, split_limit, dense
) -> None:  # type: ignore[no-untyped-def]
    """On a 3 x 4 grid, with axes and flat ranks (p = 4 px + py) mixed in one predicate."""
    tables = {"T": LookupTable("T", LOOKUP)}
    query, key = Axes("p", ("px", "py"), (3, 4)), Axes("m", ("mx", "my"), (3, 4))
    evaluator = BoxEvaluator(predicate, query, key, tables, split_limit, dense)

    def allowed(q: tuple[int, int], k: tuple[int, int]) -> bool:
        env = {"px": q[0], "py": q[1], "p": 4 * q[0] + q[1]}
        env.update({"mx": k[0], "my": k[1], "m": 4 * k[0] + k[1]})
        return bool(_value(predicate, env))

    queries = list(itertools.product(*(_points(i) for i in qbox)))
    values = [allowed(q, k) for q in queries for k in itertools.product(*map(_points, kbox))]
    truth = evaluator.truth([qbox], [kbox])
    assert truth != TRUE or all(values)
    assert truth != FALSE or not any(values)
    region = evaluator.key_region([qbox])
    for k in itertools.product(range(3), range(4)):
        if any(allowed(q, k) for q in queries):
            assert any(
                all(i.lo <= c <= i.hi for c, i in zip(k, box, strict=True)) for box in region
            )


@given(intervals(-30, 30), st.integers(1, 7))
def test_modulo_is_exact_within_one_period(a, c) -> None:
    got = compile_value(parse_expr(f"x % {c}"), {})({"x": a})
    values = [v % c for v in _points(a)]
    if a.lo // c == a.hi // c:
        assert got == Interval(min(values), max(values))
    else:
        assert got == Interval(0, c - 1)


def test_comparisons_of_independent_operands_are_exact() -> None:
    truth = compile_truth(parse_expr("y <= x"), {})
    assert truth({"x": Interval(4, 7), "y": Interval(0, 4)}) == TRUE
    assert truth({"x": Interval(4, 7), "y": Interval(8, 9)}) == FALSE
    assert truth({"x": Interval(4, 7), "y": Interval(5, 9)}) == UNKNOWN


def test_lookup_equality_is_true_only_for_equal_constants() -> None:
    truth = compile_truth(Binary("==", Access("T", (Name("x"),)), Access("T", (Name("y"),))), {
        "T": LookupTable("T", LOOKUP)
    })  # fmt: skip
    assert truth({"x": Interval(2, 4), "y": Interval(3, 3)}) == TRUE  # all 1
    assert truth({"x": Interval(0, 1), "y": Interval(2, 4)}) == FALSE  # 0 vs 1
    assert truth({"x": Interval(0, 2), "y": Interval(1, 1)}) == UNKNOWN


def test_division_by_a_range_through_zero_is_refused() -> None:
    value = compile_value(parse_expr("x // y"), {})
    with pytest.raises(ValueError, match="positive divisor"):
        value({"x": Interval(0, 3), "y": Interval(0, 2)})


# -- splitting makes window formulas exact -----------------------------------------------

NA_START = "max(x - 3, 0) + min(20 - x - 4, 0)"  # 1-D NA, L = 20, kernel 7
NA_WINDOW = parse_expr(f"{NA_START} <= y and y < {NA_START} + 7")


def _window_evaluator(split_limit: int, dense_limit: int = 0) -> BoxEvaluator:
    axes = (Axes("x", ("x",), (20,)), Axes("y", ("y",), (20,)))
    return BoxEvaluator(NA_WINDOW, *axes, {}, split_limit, dense_limit)


_ALLOWED = torch.tensor(
    [[bool(_value(NA_WINDOW, {"x": x, "y": y})) for y in range(20)] for x in range(20)]
)


def _exact(qbox: Interval, kbox: Interval) -> int:
    block = _ALLOWED[qbox.lo : qbox.hi + 1, kbox.lo : kbox.hi + 1]
    return TRUE if bool(block.all()) else FALSE if not bool(block.any()) else UNKNOWN


def test_per_row_split_makes_neighborhood_windows_exact() -> None:
    split, unsplit = _window_evaluator(16), _window_evaluator(0)
    boxes = [Interval(a, b) for a in range(20) for b in range(a, min(a + 5, 20))]
    looser = 0
    for qbox, kbox in itertools.product(boxes, boxes):
        exact = _exact(qbox, kbox)
        assert split.truth([(qbox,)], [(kbox,)]) == exact
        looser += unsplit.truth([(qbox,)], [(kbox,)]) != exact
    assert looser > 0  # the correlated start is loose without the split


def test_dense_group_tables_are_exact_without_splitting() -> None:
    dense = _window_evaluator(0, DENSE_LIMIT)
    assert all(group.dense is not None for group in dense.groups)
    boxes = [Interval(a, b) for a in range(20) for b in range(a, min(a + 5, 20))]
    for qbox, kbox in itertools.product(boxes, boxes):
        assert dense.truth([(qbox,)], [(kbox,)]) == _exact(qbox, kbox)
    for qbox in boxes:
        allowed = _ALLOWED[qbox.lo : qbox.hi + 1].any(0).nonzero().flatten().tolist()
        refused = (~_ALLOWED[qbox.lo : qbox.hi + 1]).any(0).nonzero().flatten().tolist()
        assert dense.key_region([(qbox,)]) == [(Interval(allowed[0], allowed[-1]),)]
        keys = [y for box in dense.fail_region([(qbox,)]) for y in _points(box[0])]
        assert keys == refused  # exactly the refused keys


def test_groups_over_too_many_coordinates_get_no_table() -> None:
    axes = (Axes("x", ("x",), (20,)), Axes("y", ("y",), (20,)))
    assert BoxEvaluator(NA_WINDOW, *axes, {}, 16, 399).groups[0].dense is None
    assert BoxEvaluator(NA_WINDOW, *axes, {}, 16, 400).groups[0].dense is not None


def test_key_region_of_a_window_row_is_the_window() -> None:
    evaluator = _window_evaluator(16)
    assert evaluator.key_region([(Interval(0, 0),)]) == [(Interval(0, 6),)]
    assert evaluator.key_region([(Interval(8, 11),)]) == [(Interval(5, 14),)]
    assert evaluator.key_region([(Interval(19, 19),)]) == [(Interval(13, 19),)]


@pytest.mark.parametrize("dense", [0, DENSE_LIMIT])
def test_or_of_disjoint_ranges_keeps_two_boxes(dense: int) -> None:
    predicate = parse_expr("y <= x and y >= x - 2 or y < 2")
    axes = Axes("x", ("x",), (40,)), Axes("y", ("y",), (40,))
    evaluator = BoxEvaluator(predicate, *axes, {}, 16, dense)
    assert sorted(evaluator.key_region([(Interval(20, 23),)])) == [
        (Interval(0, 1),),
        (Interval(18, 23),),
    ]


@pytest.mark.parametrize("dense", [0, DENSE_LIMIT])
def test_lookup_equality_bounds_keys_by_positions(dense: int) -> None:
    predicate = parse_expr("T[y] == T[x]")
    tables = {"T": LookupTable("T", LOOKUP)}
    axes = Axes("x", ("x",), (DOMAIN,)), Axes("y", ("y",), (DOMAIN,))
    evaluator = BoxEvaluator(predicate, *axes, tables, 16, dense)
    assert evaluator.key_region([(Interval(2, 3),)]) == [(Interval(2, 4),)]
    assert evaluator.key_region([(Interval(5, 7),)]) == [(Interval(5, 7),)]  # values 2..3


# -- lookup tables and box merging -------------------------------------------------------


@given(st.data())
def test_lookup_ranges_match_brute_force(data) -> None:
    rows, cols = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 20))
    entries = st.lists(st.integers(-5, 5), min_size=rows * cols, max_size=rows * cols)
    values = torch.tensor(data.draw(entries)).reshape(rows, cols)
    table = LookupTable("T", values)
    r, c = data.draw(intervals(0, rows - 1)), data.draw(intervals(0, cols - 1))
    block = values[r.lo : r.hi + 1, c.lo : c.hi + 1]
    assert table.over([r, c]) == Interval(block.min().item(), block.max().item())
    vlo = data.draw(st.integers(-6, 6))
    vhi = data.draw(st.integers(vlo, 6))
    line = values[r.lo]
    hits = [k for k in range(cols) if vlo <= line[k] <= vhi]
    want = (hits[0], hits[-1]) if hits else None
    assert table.line(1, [r.lo, 0]).positions(vlo, vhi) == want


@given(st.lists(st.tuples(intervals(), intervals()), max_size=12))
def test_merged_boxes_cover_the_union(boxes) -> None:
    merged = merge_boxes(boxes)
    for box in boxes:
        for x, y in itertools.product(_points(box[0]), _points(box[1])):
            assert any(m[0].lo <= x <= m[0].hi and m[1].lo <= y <= m[1].hi for m in merged)


@pytest.mark.parametrize(
    "text",
    ["px % 2 == mx % 2 and abs(py - my) <= 3", "doc[b, m] == doc[b, p] and m <= p",
     "max(0, min(px // 2 * 2 - 3, 7)) <= mx or not (m < 4)", "-(p - 2 * m) > 1"],
)  # fmt: skip
def test_names_equals_the_ir_walk(text: str) -> None:
    expr = parse_expr(text)
    assert names(expr) == {n.id for n in walk(expr) if isinstance(n, Name)}


def test_masks_keep_the_names_their_predicate_reads() -> None:
    from einscade.frontends.local import neighborhood_attention
    from einscade.passes.analysis.masks import attention_mask

    mask = attention_mask(neighborhood_attention((8, 8), 3, dilation=2))
    assert mask.predicate is not None
    assert mask.predicate_names == frozenset(names(mask.predicate))
