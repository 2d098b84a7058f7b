"""The operator table: every map function, binary operator and reduction the IR knows.

Codegen back ends map these names to their own implementations; the parser and the verifier
only need names, arities and precedence from here.
"""

from __future__ import annotations

import math

# Map functions callable as ``name(args)``: name -> number of arguments.
MAP_FUNCTIONS: dict[str, int] = {
    "exp": 1,
    "exp2": 1,
    "log": 1,
    "log2": 1,
    "sqrt": 1,
    "abs": 1,
    "neg": 1,
    "sigmoid": 1,
    "softplus": 1,
    "relu": 1,
    "elu": 1,
    "tanh": 1,
    "max": 2,
    "min": 2,
    "where": 3,
}

# Functions that are also meaningful on integer index expressions.
INDEX_FUNCTIONS: frozenset[str] = frozenset({"min", "max", "abs"})

# Reductions: name -> identity (the value of a reduction over an empty fiber).
REDUCTIONS: dict[str, float] = {"sum": 0.0, "max": -math.inf, "min": math.inf}

# Binary operators by binding strength (higher binds tighter).
BINARY_PRECEDENCE: dict[str, int] = {
    "or": 1,
    "and": 2,
    "==": 4,
    "!=": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
    "//": 6,
    "%": 6,
}
NOT_PRECEDENCE = 3
UNARY_MINUS_PRECEDENCE = 7
ATOM_PRECEDENCE = 9

COMPARISONS: frozenset[str] = frozenset({"==", "!=", "<", "<=", ">", ">="})
LOGICAL: frozenset[str] = frozenset({"and", "or"})
INTEGER_ONLY: frozenset[str] = frozenset({"//", "%"})

KEYWORDS: frozenset[str] = frozenset(
    {"cascade", "size", "param", "grid", "let", "iterate", "if", "and", "or", "not", "inf"}
    | {"int", "float"}
)
