"""Canonical operand shapes for the torch lowering, and back.

Q becomes ``[BH, P, E]`` (the batch ranks of a score row flattened row-major), K and V
``[BK, M, E]`` / ``[BK, M, F]`` over their own head dimensions, with the map from each query
head to the K and V head it reads (``h // G`` evaluated per head). When consecutive runs of
``G`` query heads read one key head (GQA, MQA), the problem is ``q [BK, G, P, E]`` against
the un-repeated K and V; other head maps gather K and V per query head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from einscade.codegen.bind import Binding
from einscade.codegen.torch_lowering.evaluate import Evaluator
from einscade.codegen.torch_lowering.execute import Problem
from einscade.codegen.torch_lowering.recognize import SoftmaxForm
from einscade.ir.cascade import Cascade, size_symbol
from einscade.ir.errors import BindError
from einscade.ir.expr import Access, Name
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; fp32, fp16 and bf16 compute in fp32 (fp32 accumulation)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def batch_coordinates(form: SoftmaxForm, binding: Binding) -> dict[str, torch.Tensor]:
    """Each batch rank's coordinate of every flat query head ``[BH]`` (row-major)."""
    extents = [binding.sizes[size_symbol(r)] for r in form.batch_ranks]
    flat = torch.arange(math.prod(extents))
    coords = {}
    for i, rank in enumerate(form.batch_ranks):
        stride = math.prod(extents[i + 1 :])
        coords[rank] = (flat // stride) % extents[i]
    return coords


@dataclass
class SubProblem:
    """The operands of some query heads (``heads``, flat indices) and where results go."""

    problem: Problem
    heads: torch.Tensor
    whole: bool

    def finish(self, out: torch.Tensor) -> None:
        """Copy the results into ``out [BH, P, F]`` unless they were written there."""
        if not self.whole:
            results = self.problem.out.reshape(len(self.heads), *out.shape[1:])
            out.index_copy_(0, self.heads, results)


@dataclass
class Canonical:
    """The canonical operands of one call."""

    form: SoftmaxForm
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    key_heads: torch.Tensor
    value_heads: torch.Tensor
    batch_shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.q.shape[0], self.q.shape[1], self.v.shape[-1])

    def problem(self, heads: torch.Tensor, out: torch.Tensor) -> SubProblem:
        """The :class:`Problem` of the query heads ``heads`` (grouped when GQA-shaped)."""
        whole = len(heads) == self.q.shape[0]
        q = self.q if whole else self.q.index_select(0, heads)
        key_heads, value_heads = self.key_heads[heads], self.value_heads[heads]
        unique = torch.unique_consecutive(key_heads)
        groups = len(heads) // len(unique)
        grouped = len(heads) % len(unique) == 0 and torch.equal(
            key_heads, unique.repeat_interleave(groups)
        ) and torch.equal(key_heads, value_heads)  # fmt: skip
        if grouped:
            k, v = _rows(self.k, unique), _rows(self.v, unique)
        else:
            groups = 1
            k, v = _rows(self.k, key_heads), _rows(self.v, value_heads)
        shape = (len(heads) // groups, groups, q.shape[1])
        target = out if whole else torch.empty(len(heads), *out.shape[1:], dtype=out.dtype)
        problem = Problem(q.view(*shape, q.shape[2]), k, v, target.view(*shape, target.shape[2]))
        return SubProblem(problem, heads, whole)

    def restore(self, out: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """``out [BH, P, F]`` in the output's rank order and the inputs' dtype."""
        form = self.form
        shaped = out.view(*self.batch_shape, out.shape[1], out.shape[2])
        canonical = (*form.batch_ranks, form.query_rank, form.value_rank)
        order = [canonical.index(r) for r in form.output_ranks]
        return shaped.permute(order).to(self.dtype).contiguous()


def _rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if len(rows) == tensor.shape[0] and torch.equal(rows, torch.arange(len(rows))):
        return tensor
    return tensor.index_select(0, rows)


def canonicalise(
    form: SoftmaxForm,
    cascade: Cascade,
    binding: Binding,
    tensors: dict[str, torch.Tensor],
    head_maps: dict[tuple, torch.Tensor] | None = None,  # type: ignore[type-arg]
) -> Canonical:
    """Bring Q, K and V of one call to the canonical shapes (views where possible).
    ``head_maps`` caches the head maps of one program across calls (the caller's dict:
    keys are cheap to hash, unlike the cascade's IR)."""
    head_maps = {} if head_maps is None else head_maps
    sizes = binding.sizes
    dtype = tensors[form.query.tensor].dtype
    if not dtype.is_floating_point:
        raise BindError(f"input {form.query.tensor!r} has dtype {dtype}; expected a float dtype")
    compute = compute_dtype(dtype)
    batch_shape = tuple(sizes[size_symbol(r)] for r in form.batch_ranks)
    order = (*form.batch_ranks, form.query_rank, form.head_rank)
    q = _arranged(tensors[form.query.tensor], form.query, order, sizes)
    q = q.reshape(math.prod(batch_shape), q.shape[-2], q.shape[-1]).to(compute).contiguous()
    k, key_heads = _key_side(form, cascade, binding, tensors, form.key, form.head_rank,
                             head_maps)  # fmt: skip
    v, value_heads = _key_side(form, cascade, binding, tensors, form.value, form.value_rank,
                               head_maps)  # fmt: skip
    k, v = k.to(compute).contiguous(), v.to(compute).contiguous()  # flat row views need it
    return Canonical(form, q, k, v, key_heads, value_heads,
                     batch_shape, dtype)  # fmt: skip


def _arranged(tensor: torch.Tensor, read: Access, order, sizes) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``tensor`` with dims in ``order`` (its read's plain ranks), broadcast dims expanded."""
    ranks = [i.id for i in read.indices]  # type: ignore[union-attr]
    permuted = tensor.permute([ranks.index(r) for r in order])
    return permuted.expand(*(sizes[size_symbol(r)] for r in order))


def _key_side(form, cascade, binding: Binding, tensors, read: Access, dim_rank: str, cache):  # type: ignore[no-untyped-def]
    """K or V as ``[heads, M, dim]`` and the head each flat query head reads."""
    tensor = tensors[read.tensor]
    plain = (form.key_rank, dim_rank)
    positions = [next(d for d, i in enumerate(read.indices) if i == Name(r)) for r in plain]
    others = [d for d in range(len(read.indices)) if d not in positions]
    arranged = tensor.permute(others + positions)
    arranged = arranged.expand(*arranged.shape[: len(others)],
                               *(binding.sizes[size_symbol(r)] for r in plain))  # fmt: skip
    flat = arranged.reshape(-1, arranged.shape[-2], arranged.shape[-1])
    sizes, params = tuple(binding.sizes.items()), tuple(binding.params.items())
    key = (read.tensor, dim_rank, tuple(tensor.shape), sizes, params)
    if key not in cache:
        cache[key] = _head_map(form, cascade, read, plain, tuple(tensor.shape), sizes, params)
    return flat, cache[key]


def _head_map(form, cascade, read: Access, plain, shape, sizes, params) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The flat head of ``read``'s tensor that each flat query head reads (``h // G``
    evaluated per head; dims of extent 1 broadcast). The same shapes and parameters give
    the same map on every call (the caller caches it)."""
    binding = Binding(dict(sizes), dict(params), {})
    env = {**binding.sizes, **binding.params, **batch_coordinates(form, binding)}
    count = math.prod(binding.sizes[size_symbol(r)] for r in form.batch_ranks)
    scope = Scope(cascade)
    heads = torch.zeros(count, dtype=torch.long)
    positions = {d for d, i in enumerate(read.indices) if i in (Name(plain[0]), Name(plain[1]))}
    for dim in (d for d in range(len(read.indices)) if d not in positions):
        extent = shape[dim]
        index = torch.zeros(count, dtype=torch.long)  # a broadcast dimension reads 0
        if extent != 1:
            value = Evaluator(env, {})(scope.expand(read.indices[dim]))  # type: ignore[arg-type]
            index = torch.as_tensor(value, dtype=torch.long).expand(count)
            if bool(((index < 0) | (index >= extent)).any()):
                raise BindError(f"{print_expr(read)}: index {print_expr(read.indices[dim])} "
                                f"leaves 0..{extent - 1} of {read.tensor} dim {dim}")  # fmt: skip
        heads = heads * extent + index
    return heads
