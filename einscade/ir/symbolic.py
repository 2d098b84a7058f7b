"""Expressions to sympy and back, for the algebra passes do (separability, intervals).

Tensor reads become opaque symbols named by their printed form; functions sympy does not
model (``elu``, ``where``...) become uninterpreted functions, so algebra never looks
inside them. ``from_sympy`` maps results (a correction factor, a simplified bound) back.
"""

from __future__ import annotations

import sympy

from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary
from einscade.ir.printer import print_expr

_SYMPY_FUNCS = {"exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "tanh": sympy.tanh}


class SymbolTable:
    """Remembers which sympy symbol stands for which IR expression (to map back)."""

    def __init__(self) -> None:
        self.exprs: dict[sympy.Symbol, Expr] = {}

    def symbol(self, expr: Expr) -> sympy.Symbol:
        name = print_expr(expr)
        symbol = sympy.Symbol(name, real=True)
        self.exprs[symbol] = expr
        return symbol


def to_sympy(expr: Expr, table: SymbolTable) -> sympy.Expr:
    """Translate a value or index expression; tensor reads become symbols."""
    match expr:
        case Num(value=v):
            if v == float("inf"):
                return sympy.oo
            if v == float("-inf"):
                return -sympy.oo
            return sympy.Integer(v) if isinstance(v, int) else sympy.Float(v)
        case Name() | Access():
            return table.symbol(expr)
        case Unary(op="-", operand=x):
            return -to_sympy(x, table)
        case Binary(op=op, lhs=a, rhs=b) if op in ("+", "-", "*", "/", "//", "%"):
            x, y = to_sympy(a, table), to_sympy(b, table)
            return {
                "+": lambda: x + y,
                "-": lambda: x - y,
                "*": lambda: x * y,
                "/": lambda: x / y,
                "//": lambda: sympy.floor(x / y),
                "%": lambda: sympy.Mod(x, y),
            }[op]()
        case Call(fn=fn, args=args):
            values = [to_sympy(a, table) for a in args]
            if fn in _SYMPY_FUNCS:
                return _SYMPY_FUNCS[fn](*values)
            if fn == "exp2":
                return sympy.Integer(2) ** values[0]
            if fn in ("max", "min"):
                return (sympy.Max if fn == "max" else sympy.Min)(*values)
            return sympy.Function(fn)(*values)
    return table.symbol(expr)  # comparisons, logic: opaque


def from_sympy(value: sympy.Expr, table: SymbolTable) -> Expr:
    """Translate back; raises ValueError on forms the IR cannot write."""
    if value in table.exprs:
        return table.exprs[value]
    if value.is_Integer:
        return Num(int(value))
    if value.is_Number:
        return Num(float(value))
    if value is sympy.oo or value is -sympy.oo:
        return Num(float(value))
    if isinstance(value, sympy.exp):
        return Call("exp", (from_sympy(value.args[0], table),))
    if isinstance(value, sympy.log):
        return Call("log", (from_sympy(value.args[0], table),))
    if value.is_Add:
        return _join_sum(value, table)
    if value.is_Mul:
        return _join_product(value, table)
    if value.is_Pow and value.exp.is_Integer:
        base = from_sympy(value.base, table)
        power = int(value.exp)
        product: Expr = base
        for _ in range(abs(power) - 1):
            product = Binary("*", product, base)
        return Binary("/", Num(1.0), product) if power < 0 else product
    if isinstance(value, sympy.Max | sympy.Min):
        args = [from_sympy(a, table) for a in value.args]
        result = args[0]
        for arg in args[1:]:
            result = Call("max" if isinstance(value, sympy.Max) else "min", (result, arg))
        return result
    raise ValueError(f"cannot write {value} in the IR")


def _join_sum(value: sympy.Expr, table: SymbolTable) -> Expr:
    terms = sorted(value.args, key=lambda t: t.could_extract_minus_sign())
    result = from_sympy(terms[0], table)
    for term in terms[1:]:
        if term.could_extract_minus_sign():
            result = Binary("-", result, from_sympy(-term, table))
        else:
            result = Binary("+", result, from_sympy(term, table))
    return result


def _join_product(value: sympy.Expr, table: SymbolTable) -> Expr:
    numerator, denominator = sympy.fraction(value)
    if denominator != 1:
        return Binary("/", from_sympy(numerator, table), from_sympy(denominator, table))
    coefficient, rest = value.as_coeff_Mul()
    factors = [from_sympy(f, table) for f in sympy.Mul.make_args(rest)]
    result = factors[0]
    for factor in factors[1:]:
        result = Binary("*", result, factor)
    if coefficient == -1:
        return Unary("-", result)
    if coefficient != 1:
        return Binary("*", from_sympy(coefficient, table), result)
    return result
