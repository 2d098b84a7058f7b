"""The IR's operators as torch functions, for every executor that evaluates expressions
densely with torch (the reference executor, dense mask evaluation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TORCH_UNARY = {
    "exp": torch.exp,
    "exp2": torch.exp2,
    "log": torch.log,
    "log2": torch.log2,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "neg": torch.neg,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "relu": torch.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
}
TORCH_BINARY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "and": lambda a, b: torch.as_tensor(a) & torch.as_tensor(b),
    "or": lambda a, b: torch.as_tensor(a) | torch.as_tensor(b),
}


def all_of(conditions) -> torch.Tensor | None:  # type: ignore[no-untyped-def]
    """The conjunction of boolean tensors (None for none): presence conditions that must all
    hold, shared by the reference executor and the torch lowering."""
    if not conditions:
        return None
    result = conditions[0]
    for condition in conditions[1:]:
        result = result & condition
    return result
