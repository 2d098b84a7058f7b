"""Deterministic text form of cascades (the ``.ecas`` format); ``parse(print(c)) == c``.

Parentheses are printed only where precedence or left-associativity needs them, so the
printed text parses back to the identical tree.
"""

from __future__ import annotations

import math

from einscade.ir import ops
from einscade.ir.cascade import Cascade, Einsum, Statement
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary

INDENT = "  "


def format_number(value: int | float) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are not IR numbers")
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN cannot appear in a cascade")
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def precedence(expr: Expr) -> int:
    match expr:
        case Num(value=v) if v < 0:
            return ops.UNARY_MINUS_PRECEDENCE
        case Binary(op=op):
            return ops.BINARY_PRECEDENCE[op]
        case Unary(op="not"):
            return ops.NOT_PRECEDENCE
        case Unary():
            return ops.UNARY_MINUS_PRECEDENCE
    return ops.ATOM_PRECEDENCE


def _wrap(expr: Expr, needs_parens: bool) -> str:
    text = print_expr(expr)
    return f"({text})" if needs_parens else text


def print_expr(expr: Expr) -> str:
    """Print one expression with minimal parentheses."""
    match expr:
        case Num(value=v):
            return format_number(v)
        case Name(id=name):
            return name
        case Access(tensor=t, indices=idx):
            return f"{t}[{', '.join(print_expr(i) for i in idx)}]"
        case Call(fn=fn, args=args):
            return f"{fn}({', '.join(print_expr(a) for a in args)})"
        case Unary(op="not", operand=x):
            return "not " + _wrap(x, precedence(x) < ops.NOT_PRECEDENCE)
        case Unary(op=op, operand=x):
            # A literal right after unary minus would fold into a negative number on parse.
            tight = precedence(x) <= ops.UNARY_MINUS_PRECEDENCE or isinstance(x, Num)
            return op + _wrap(x, tight)
        case Binary(op=op, lhs=a, rhs=b):
            p = ops.BINARY_PRECEDENCE[op]
            compare = op in ops.COMPARISONS
            left = _wrap(a, precedence(a) < p or (compare and precedence(a) == p))
            right = _wrap(b, precedence(b) <= p)
            return f"{left} {op} {right}"
    raise TypeError(f"not an expression: {expr!r}")


def print_einsum(stmt: Einsum) -> str:
    idx = ", ".join(print_expr(i) for i in stmt.indices)
    text = f"{stmt.target}[{idx}] = {print_expr(stmt.value)}"
    if stmt.reduce is not None:
        text += f" :: {stmt.reduce.op}({', '.join(stmt.reduce.ranks)})"
    if stmt.predicate is not None:
        text += f" if {print_expr(stmt.predicate)}"
    return text


def _statement_lines(stmt: Statement, depth: int) -> list[str]:
    pad = INDENT * depth
    if isinstance(stmt, Einsum):
        return [pad + print_einsum(stmt)]
    lines = [f"{pad}iterate {stmt.rank} {{"]
    for inner in stmt.body:
        lines.extend(_statement_lines(inner, depth + 1))
    lines.append(pad + "}")
    return lines


def print_cascade(cascade: Cascade) -> str:
    """The whole cascade as ``.ecas`` text, ending in a newline."""
    inputs = ", ".join(f"{t.name}[{', '.join(t.ranks)}]" for t in cascade.inputs)
    outputs = ", ".join(cascade.outputs)
    lines = [f"cascade @{cascade.name}({inputs}) -> ({outputs}) {{"]
    for size in cascade.sizes:
        lines.append(f"{INDENT}size {size.name} = {print_expr(size.value)}")
    for param in cascade.params:
        default = "" if param.default is None else f" = {print_expr(param.default)}"
        lines.append(f"{INDENT}param {param.name}: {param.kind}{default}")
    for grid in cascade.grids:
        lines.append(f"{INDENT}grid {grid.rank} = ({', '.join(grid.axes)})")
    for let in cascade.lets:
        lines.append(f"{INDENT}let {let.name} = {print_expr(let.value)}")
    for stmt in cascade.body:
        lines.extend(_statement_lines(stmt, 1))
    lines.append("}")
    return "\n".join(lines) + "\n"
