"""Map functions of the IR as Triton code, and the small helpers some of them need.

Builtins of Triton are called directly (``tl.exp``); everything else is a ``@triton.jit``
helper written into the kernel file when used. Kernels call no ``@jit`` function of
Triton's standard library (``tl.sigmoid``, ``tl.max``): those are compiled or interpreted
depending on how Triton was first imported, while a kernel file is loaded in the mode each
launch needs. Reductions use ``tl.reduce`` with Triton's own combine functions
(``REDUCE_COMBINE``), which is what ``tl.max`` and ``tl.sum`` do, and which the interpreter
runs with numpy. Each helper is written for the whole
float range: ``tanh`` and ``softplus`` never overflow, integer ``//`` and ``%`` round toward
minus infinity like the IR (Triton's own round toward zero).
"""

from __future__ import annotations

import math

# IR function -> Triton call template over its argument codes.
DIRECT: dict[str, str] = {
    "exp": "tl.exp({})",
    "exp2": "tl.exp2({})",
    "log": "tl.log({})",
    "log2": "tl.log2({})",
    "sqrt": "tl.sqrt({})",
    "abs": "tl.abs({})",
    "relu": "tl.maximum({}, 0.0)",
    "max": "tl.maximum({}, {})",
    "min": "tl.minimum({}, {})",
    "where": "tl.where({}, {}, {})",
}

HELPERS: dict[str, str] = {
    "sigmoid": """\
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))
""",
    "tanh": """\
@triton.jit
def _tanh(x):
    # sign(x) * (1 - exp(-2|x|)) / (1 + exp(-2|x|)): exp never overflows
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)
""",
    "softplus": """\
@triton.jit
def _softplus(x):
    # log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)): exp never overflows
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
""",
    "elu": """\
@triton.jit
def _elu(x):
    return tl.where(x > 0, x, tl.exp(tl.minimum(x, 0.0)) - 1.0)
""",
    "//": """\
@triton.jit
def _floordiv(a, b):
    # Triton's // truncates toward zero; the IR floors
    q = a // b
    return tl.where((q * b != a) & ((a < 0) != (b < 0)), q - 1, q)
""",
    "%": """\
@triton.jit
def _floormod(a, b):
    # Triton's % takes the dividend's sign; the IR takes the divisor's
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)
""",
}

HELPER_CALL = {
    "sigmoid": "_sigmoid({})",
    "tanh": "_tanh({})",
    "softplus": "_softplus({})",
    "elu": "_elu({})",
    "//": "_floordiv({}, {})",
    "%": "_floormod({}, {})",
}

# IR reduction -> Triton's combine function (imported by the kernel file).
REDUCE_COMBINE = {"sum": "_sum_combine", "max": "_elementwise_max", "min": "_elementwise_min"}
REDUCE_IMPORT = (
    "from triton.language.standard import _elementwise_max, _elementwise_min, _sum_combine"
)

HELPER_NAMES = frozenset(call.split("(")[0] for call in HELPER_CALL.values()) | set(
    REDUCE_COMBINE.values()
)

# Constant folding of calls on literals, with the IR's (Python's) semantics.
FOLD = {
    "exp": math.exp,
    "exp2": lambda x: 2.0**x,
    "log": math.log,
    "log2": math.log2,
    "sqrt": math.sqrt,
    "abs": abs,
    "neg": lambda x: -x,
    "relu": lambda x: max(x, 0.0),
    "tanh": math.tanh,
    "max": max,
    "min": min,
}


def float_literal(value: float) -> str:
    if math.isinf(value):
        return 'float("inf")' if value > 0 else 'float("-inf")'
    if math.isnan(value):
        return 'float("nan")'
    return repr(float(value))


def literal(value: int | float) -> str:
    return str(value) if isinstance(value, int) else float_literal(value)


def call_template(fn: str) -> str | None:
    """The template for ``fn``; None if the IR function is unknown to this back end."""
    return DIRECT.get(fn) or HELPER_CALL.get(fn)
