"""Run a plan's tile groups through the native kernel (``attend.cpp``).

The kernel computes, per (key head, query tile), ``softmax(scale * Q K^T + mask) V`` over
the tile's key tokens with an online softmax over key chunks, the G query heads of a GQA
group stacked on the rows, K and V gathered per tile (never repeated). Its arguments are
the canonical problem of the torch lowering (``q [BK, G, P, E]``, ``k [BK, M, E]``,
``v [BK, M, F]``, ``out [BK, G, P, F]``, contiguous) and each group's token and mask
tensors, passed by pointer. Float32 only: the torch lowering's compute dtype for every
input dtype but float64, which runs its matmul kernel.

What it cannot do: score maps other than a scale (soft-capping, bias tensors, ALiBi run
in the matmul kernel of :mod:`einscade.codegen.torch_lowering.execute`).
"""

from __future__ import annotations

import ctypes

import torch

from einscade.codegen.native.library import Group, Problem, load
from einscade.codegen.torch_lowering.plan import Plan, TileGroup


def available() -> bool:
    """Whether the native kernel is built and loadable (see :mod:`.library`)."""
    return load() is not None


def attend_plan(
    plan: Plan,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    threads: int,
    library: ctypes.CDLL | None = None,
) -> None:
    """Fill ``out`` for every query token of ``plan`` (tokens that see no key: 0), with
    ``library`` (default: the one :func:`load` builds for this machine)."""
    library = library or load()
    if library is None:
        raise RuntimeError("einscade native kernel: not available")
    for name, x in (("q", q), ("k", k), ("v", v), ("out", out)):
        if x.dtype != torch.float32 or not x.is_contiguous():
            raise ValueError(f"einscade native kernel: {name} must be contiguous float32, "
                             f"got {x.dtype} with strides {x.stride()}")  # fmt: skip
    groups = [_group(g) for g in plan.groups]
    problem = Problem(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
        k.shape[0], q.shape[1], q.shape[2], k.shape[1], q.shape[3], v.shape[2],
    )  # fmt: skip
    array = (Group * max(1, len(groups)))(*(g for g, _ in groups))
    library.einscade_attend(ctypes.byref(problem), array, len(groups), scale, threads)
    if plan.dead.numel():
        out.index_fill_(2, plan.dead, 0.0)


def _group(group: TileGroup) -> tuple[Group, tuple[torch.Tensor, ...]]:
    """The ctypes descriptor of ``group`` and the tensors it points into (kept alive by
    the caller's list for the duration of the call)."""
    queries = group.queries.to(torch.int64).contiguous()
    keys = group.keys.to(torch.int64).contiguous()
    tensors: tuple[torch.Tensor, ...] = (queries, keys)
    pointer, mask_tiles = None, 0
    bias = _key_major_bias(group)
    if bias is not None:
        pointer, mask_tiles = bias.data_ptr(), bias.shape[0]
        tensors = (*tensors, bias)
    descriptor = Group(
        queries.data_ptr(), keys.data_ptr(), pointer, group.num_tiles, group.query_size,
        group.key_count, mask_tiles, group.mask_from,
    )  # fmt: skip
    return descriptor, tensors


def _key_major_bias(group: TileGroup) -> torch.Tensor | None:
    """The group's mask as the kernel reads it: ``[T or 1, masked keys, Tq]`` float32,
    0 allowed and -inf not (key-major: the kernel's scores are ``S^T``); cached."""
    bias = group.bias(torch.float32)  # [T or 1, Tq, masked keys], cached by the group
    if bias is None:
        return None
    key = ("native-bias",)
    if key not in group._cache:
        with torch.inference_mode(False):
            group._cache[key] = bias.transpose(1, 2).contiguous()
    return group._cache[key]  # type: ignore[return-value]
