"""Launching a generated kernel: bind sizes, allocate outputs, fill the arguments, run.

Inputs go by name as for the reference executor (``Q=..., K=..., V=..., scale=0.5``). Sizes
come from ``einscade.codegen.bind.bind`` (shapes, then the cascade's size definitions), so
a launch and the reference agree on what a shape means; strides are the tensors' own
(0 on a broadcast dimension), so transposed and sliced views run without copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from einscade.codegen.bind import Binding, bind
from einscade.codegen.triton.kernel import KernelArg, KernelSource, pad
from einscade.codegen.triton.layout import LayoutArrays, LayoutSource
from einscade.ir.cascade import Cascade, size_symbol
from einscade.ir.errors import BindError

_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_MAX_GRID_Y = 65535


@dataclass(frozen=True)
class LaunchResult:
    """Outputs by name (the cascade's outputs), the rows' log-sum-exp if computed, and with
    ``count_visits`` the key tiles each program visited (``[batch programs, query tiles]``)."""

    outputs: dict[str, torch.Tensor]
    lse: torch.Tensor | None
    visits: torch.Tensor | None = None


def _split(arguments: dict[str, object]) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    tensors = {k: v for k, v in arguments.items() if isinstance(v, torch.Tensor)}
    scalars = {k: v for k, v in arguments.items() if not isinstance(v, torch.Tensor)}
    return tensors, scalars


def _check_inputs(cascade: Cascade, source: KernelSource, tensors: dict[str, torch.Tensor]) -> None:
    for name in tensors:
        if cascade.input(name) is None:
            raise BindError(f"unknown input tensor {name!r} for @{cascade.name}")
    expected = _TORCH_DTYPES[source.dtype]
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise BindError(f"inputs are on different devices: {sorted(map(str, devices))}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.dtype != expected:
            raise BindError(
                f"input {name!r} is {tensor.dtype}, the kernel was built for {expected} "
                f"(build_kernel(..., dtype={source.dtype!r}))"
            )


def _allocate(source: KernelSource, binding: Binding, like: torch.Tensor):  # type: ignore[no-untyped-def]
    def shape(ranks: tuple[str, ...]) -> list[int]:
        return [binding.sizes[size_symbol(r)] for r in ranks]

    dtype = _TORCH_DTYPES[source.dtype]
    outputs = {n: torch.empty(shape(r), dtype=dtype, device=like.device) for n, r in source.outputs}
    lse = None
    if source.lse is not None:
        lse = torch.empty(shape(source.lse[1]), dtype=torch.float32, device=like.device)
    return outputs, lse


def _argument(
    arg: KernelArg, tensors: dict[str, torch.Tensor], binding: Binding,
    layout: LayoutArrays | None,
) -> object:  # fmt: skip
    if arg.role in ("layout", "layout_scalar"):
        assert layout is not None
        table = layout.arrays if arg.role == "layout" else layout.scalars
        return table[arg.tensor]
    match arg.role:
        case "pointer" | "visits":
            return tensors[arg.tensor]
        case "stride":
            if arg.dim in binding.broadcast.get(arg.tensor, frozenset()):
                return 0
            return tensors[arg.tensor].stride(arg.dim)
        case "size" | "head":
            return binding.sizes[arg.name]
        case "param":
            return binding.params[arg.name]
        case "constant":
            return arg.value
        case "pad":
            return pad(binding.sizes[arg.tensor])
    raise ValueError(f"unknown kernel argument role {arg.role!r}")


def launch(
    kernel,  # type: ignore[no-untyped-def]
    source: KernelSource,
    cascade: Cascade,
    arguments: dict[str, object],
    *,
    num_warps: int = 4,
    num_stages: int = 2,
    layout: LayoutSource | None = None,
) -> LaunchResult:
    """Run ``kernel`` (the jitted or interpreted function of ``source``) on ``arguments``;
    a block-sparse kernel takes its key tiles from ``layout``."""
    tensors, scalars = _split(arguments)
    _check_inputs(cascade, source, tensors)
    binding = bind(cascade, tensors, scalars)
    like = next(iter(tensors.values()))
    outputs, lse = _allocate(source, binding, like)
    everything = {**tensors, **outputs}
    if lse is not None and source.lse is not None:
        everything[source.lse[0]] = lse
    grid = (
        binding.sizes[source.tile_count],
        math.prod(binding.sizes[s] for s in source.batch),
    )
    if grid[1] > _MAX_GRID_Y:
        raise BindError(f"{grid[1]} batch programs exceed the grid's y limit of {_MAX_GRID_Y}")
    visits = None
    if any(a.role == "visits" for a in source.args):
        visits = torch.zeros(grid[1], grid[0], dtype=torch.int32, device=like.device)
        everything["VISITS"] = visits
    if 0 in grid:
        return LaunchResult(outputs, lse, visits)
    arrays = None
    if source.schedule == "block_sparse":
        if layout is None:
            raise BindError(f"{source.name} is block-sparse: launch it with its layout source")
        arrays = layout.arrays(binding.sizes, binding.params, tensors, like.device)
    values = [_argument(a, everything, binding, arrays) for a in source.args]
    kernel[grid](*values, num_warps=num_warps, num_stages=num_stages)
    return LaunchResult(outputs, lse, visits)
