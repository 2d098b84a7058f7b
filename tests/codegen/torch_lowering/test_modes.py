"""Autograd modes: a compiled lowering serves calls inside and outside inference mode.

Scratch buffers and plans are cached across calls; a tensor created under
``torch.inference_mode()`` is an inference tensor that cannot be written outside it. Each
test starts with no cached buffers in the calling thread (``workspace.release``), so with
one worker the first call allocates them in the first mode; with two, the chunks run on
worker threads, which must adopt the caller's mode to write the output it allocated.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from einscade.codegen.reference import reference
from einscade.codegen.torch_lowering import TorchProgram, workspace
from einscade.frontends.local import neighborhood_attention

MODES = {
    "inference": torch.inference_mode,
    "no_grad": torch.no_grad,
    "plain": contextlib.nullcontext,
}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(1, 2, 63, 8, generator=g) for name in ("Q", "K", "V")}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kernel", ["matmul", "native"])
@pytest.mark.parametrize(
    "first, then",
    [("inference", "plain"), ("inference", "no_grad"), ("plain", "inference"),
     ("no_grad", "inference")],
)  # fmt: skip
def test_calls_switch_between_inference_mode_and_normal_mode(
    first: str, then: str, kernel: str, workers: int
) -> None:
    cascade = neighborhood_attention(grid=(9, 7), kernel=(3, 5))
    tensors = _tensors()
    expected = reference(cascade, dtype=torch.float64, **tensors)
    workspace.release()
    program = TorchProgram(cascade, workers=workers, kernel=kernel, layout="rule", budget=300)
    for mode in (first, then, first):
        with MODES[mode]():
            out = program(**tensors)
        assert out.is_inference() == (mode == "inference")
        assert (out.double() - expected).abs().max() < 2e-5
    assert len(program.plans) == 1  # the plan built in the first mode serves both


def test_inputs_that_require_grad_are_refused_by_name() -> None:
    cascade = neighborhood_attention(grid=(9, 7), kernel=(3, 5))
    tensors = _tensors()
    tensors["K"].requires_grad_()
    program = TorchProgram(cascade, workers=1, layout="rule")
    with pytest.raises(TypeError, match="input 'K' requires grad.*torch.no_grad"):
        program(**tensors)
    with torch.no_grad():
        program(**tensors)
