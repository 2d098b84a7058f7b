"""``einscade.compile``: a cascade to a callable that takes the input tensors by name.

    attention = einscade.compile(einscade.neighborhood_attention(grid=(56, 56), kernel=(7, 7)))
    out = attention(Q=q, K=k, V=v)          # target="torch": block-sparse on the CPU

Targets:

- ``"torch"`` (default): the CPU lowering of :mod:`einscade.codegen.torch_lowering`. It
  executes the chosen block layout (visited key tiles only, batched matmuls, two-stage
  softmax per query tile); cascades other than masked softmax attention run densely through
  the reference executor with a one-time warning. Options: ``query_tile``, ``key_mode``,
  ``key_tile``, ``pad``, ``budget``.
- ``"triton"``: the generated Triton kernel (:func:`einscade.codegen.triton.compile.build_kernel`),
  built on first call for the inputs' dtype, head sizes and GPU arch, and cached per
  combination (the tile configuration depends on them). CUDA tensors launch
  natively; CPU tensors run under Triton's interpreter (slow; one-time warning). Options are
  ``build_kernel``'s (``block_p``, ``block_m``, ``num_warps``, ...), ``dtype`` excepted.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from einscade.codegen.torch_lowering import CallStats, TorchProgram
from einscade.codegen.torch_lowering.program import warn_once
from einscade.ir.cascade import Cascade, size_symbol
from einscade.ir.errors import EinscadeError

TARGETS = ("torch", "triton")


@dataclass
class Compiled:
    """A compiled cascade: call it with the input tensors (and parameters) by name.

    Returns the output tensor, or a tuple when the cascade has several outputs.
    """

    cascade: Cascade
    target: str
    options: dict[str, object]
    program: TorchProgram | None = None
    _kernels: dict[tuple[object, ...], object] = field(default_factory=dict, repr=False)
    # head size symbol -> (input tensor, dim) it is read from; found on the first call
    _head_places: dict[str, tuple[str, int]] | None = field(default=None, repr=False)

    def __call__(self, **arguments: object):  # type: ignore[no-untyped-def]
        if self.program is not None:
            return self.program(**arguments)
        return self._triton(arguments)

    @property
    def stats(self) -> CallStats:
        """What the last call computed (torch target): score elements, groups, plan time."""
        if self.program is None:
            raise EinscadeError("stats are kept by the torch target only")
        return self.program.stats

    def kernel(
        self, dtype: torch.dtype, head_dims: dict[str, int] | None = None, arch: int | None = None
    ):  # type: ignore[no-untyped-def]
        """The Triton kernel for inputs of ``dtype`` whose head sizes are ``head_dims``, for
        the GPU ``arch`` (90, 80; None: the builder's default), built on first use and cached:
        the tile configuration depends on all three (codegen/triton/config.py)."""
        from einscade.codegen.triton.compile import build_kernel

        key = (dtype, tuple(sorted((head_dims or {}).items())), arch)
        if key not in self._kernels:
            options = {"head_dims": head_dims, "arch": arch, **self.options}
            self._kernels[key] = build_kernel(self.cascade, dtype=dtype, **options)  # type: ignore[arg-type]
        return self._kernels[key]

    def _triton(self, arguments: dict[str, object]):  # type: ignore[no-untyped-def]
        tensors = [v for v in arguments.values() if isinstance(v, torch.Tensor)]
        floating = [t for t in tensors if t.is_floating_point()]
        if not floating:
            raise EinscadeError(f"@{self.cascade.name}: no floating-point input tensor given")
        device = floating[0].device
        if device.type != "cuda":
            warn_once(
                "triton-interpreter",
                "einscade triton target: CPU tensors run under Triton's interpreter (slow); "
                "pass CUDA tensors to launch natively, or use target='torch' on the CPU",
            )
        arch = None
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            arch = major * 10 + minor
        dtype = floating[0].dtype
        return self.kernel(dtype, self._head_dims(dtype, arguments), arch)(**arguments)

    def _head_dims(self, dtype: torch.dtype, arguments: dict[str, object]) -> dict[str, int]:
        """The head sizes (E, F, ...) of this call, read off the inputs' shapes: the kernel's
        tiles, warps and stages are chosen for them. Where each lives is found once."""
        if self._head_places is None:
            probe = self.kernel(dtype)  # which sizes the kernel pads as head dims
            heads = {a.name for a in probe.source.args if a.role == "head"}
            places = {}
            for decl in self.cascade.inputs:
                for dim, rank in enumerate(decl.ranks):
                    places.setdefault(size_symbol(rank), (decl.name, dim))
            self._head_places = {h: places[h] for h in sorted(heads) if h in places}
        found = {}
        for symbol, (name, dim) in self._head_places.items():
            tensor = arguments.get(name)
            if isinstance(tensor, torch.Tensor):
                found[symbol] = tensor.shape[dim]
        return found


def compile(cascade: Cascade, target: str = "torch", **options: object) -> Compiled:  # noqa: A001
    """Compile ``cascade`` for ``target`` (``"torch"`` or ``"triton"``); see the module doc."""
    if not isinstance(cascade, Cascade):
        raise EinscadeError(f"einscade.compile expects a Cascade, got {type(cascade).__name__}")
    if target == "torch":
        return Compiled(cascade, target, dict(options), TorchProgram(cascade, **options))
    if target == "triton":
        _check_triton_options(options)
        return Compiled(cascade, target, dict(options))
    raise EinscadeError(f"einscade.compile: unknown target {target!r}; expected one of {TARGETS}")


def _check_triton_options(options: dict[str, object]) -> None:
    from einscade.codegen.triton.compile import build_kernel

    accepted = set(inspect.signature(build_kernel).parameters) - {"cascade", "dtype"}
    for name in options:
        if name not in accepted:
            known = ", ".join(sorted(accepted))
            raise EinscadeError(f"einscade.compile(target='triton'): unknown option {name!r}; "
                                f"known: {known} (dtype follows the inputs)")  # fmt: skip
