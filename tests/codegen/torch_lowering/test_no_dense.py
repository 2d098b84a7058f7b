"""The torch target never builds the dense N x N problem.

2-D neighborhood attention on a 64 x 64 grid with a 7 x 7 window (B=1, H=1): N = 4096, so a
dense score matrix would hold 16.8M elements. A dispatch mode records every tensor any
aten operation produces during the first call (layout choice, plan, execution) and a
second one; the largest must stay far below N x N, and the score elements the program
reports must be the plan's (the layout's, up to the group padding it chose).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from einscade.codegen.torch_lowering import TorchProgram
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention


class LargestOutput(TorchDispatchMode):
    """Remembers the largest tensor produced by an aten operation."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.operation = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, tuple | list) else (result,):
            if isinstance(tensor, torch.Tensor) and tensor.numel() > self.largest:
                self.largest, self.operation = tensor.numel(), str(func)
        return result


def _largest(program: TorchProgram, **tensors: torch.Tensor) -> tuple[int, str]:
    with LargestOutput() as mode:
        program(**tensors)
        program(**tensors)
    return mode.largest, mode.operation


@pytest.mark.parametrize("kernel", ["native", "matmul"])
def test_neighborhood_64x64_never_allocates_n_by_n(kernel: str) -> None:
    grid, n = (64, 64), 64 * 64
    cascade = neighborhood_attention(grid=grid, kernel=(7, 7))
    q, k, v = (torch.randn(1, 1, n, 32) for _ in range(3))
    # dispatch modes see the calling thread only: one worker
    program = TorchProgram(cascade, workers=1, kernel=kernel)
    largest, operation = _largest(program, Q=q, K=k, V=v)
    assert largest < n * n // 16, f"{operation} produced {largest} elements (N x N = {n * n})"
    (plan,) = program.plans.values()
    stats = program.stats
    assert stats.layout_elements == plan.layout.computed_elements
    assert stats.computed_elements == sum(g.computed for g in plan.groups)
    assert stats.computed_elements <= 1.05 * stats.layout_elements
    assert stats.computed_elements < n * n / 10


def test_sliding_window_never_allocates_n_by_n() -> None:
    n = 8192
    cascade = softmax_attention(causal=True, window=(255, 0))
    q, k, v = (torch.randn(1, 2, n, 16) for _ in range(3))
    program = TorchProgram(cascade, workers=1)
    largest, operation = _largest(program, Q=q, K=k, V=v)
    assert largest < n * n // 16, f"{operation} produced {largest} elements"
    assert program.stats.computed_elements < 2 * n * n * 0.05
    (plan,) = program.plans.values()
    assert plan.flat_group is not None  # the windows continue across heads: one view


def test_reported_work_matches_the_layout_when_no_padding_is_needed() -> None:
    cascade = neighborhood_attention(grid=(16, 16, 16), kernel=4, stride=4)  # blocked
    q, k, v = (torch.randn(1, 2, 4096, 16) for _ in range(3))
    program = TorchProgram(cascade)
    program(Q=q, K=k, V=v)
    (plan,) = program.plans.values()
    assert program.stats.computed_elements == program.stats.layout_elements == 2 * 4096 * 64
    assert [g.allowed for g in plan.groups] == [None]  # full tiles: no element mask
    assert math.isclose(program.stats.dense_elements / program.stats.computed_elements, 64)
