"""Score maps beyond a scale (soft-capping, a bias tensor, ALiBi) on score chunks.

The executor hands over a chunk of raw scores ``[tiles, G * Tq, Lk]`` (already multiplied
by the score product's scalar factors); each map statement is evaluated on it by
broadcasting, with the ranks bound to the chunk's coordinates: query tokens along the
rows, key tokens along the columns, the query head (and batch) of each row block. Reads
that leave their tensor make the point absent (-inf before the softmax).
"""

from __future__ import annotations

import torch

from einscade.codegen.bind import Binding
from einscade.codegen.torch_lowering.canonical import batch_coordinates
from einscade.codegen.torch_lowering.evaluate import Evaluator, coordinates
from einscade.codegen.torch_lowering.execute import Chunk
from einscade.codegen.torch_lowering.recognize import SoftmaxForm
from einscade.codegen.torch_ops import all_of
from einscade.ir.cascade import Cascade, size_symbol
from einscade.ir.expr import Access, Expr, Name, map_expr
from einscade.ir.scope import Scope
from einscade.passes.analysis.masks import Axes


class ScoreMapEvaluator:
    """Callable ``(scores, chunk) -> scores`` applying the form's score maps."""

    def __init__(
        self,
        form: SoftmaxForm,
        cascade: Cascade,
        binding: Binding,
        tensors: dict[str, torch.Tensor],
        problem_heads: torch.Tensor,
    ):
        scope = Scope(cascade)
        self.form = form
        self.tensors = tensors
        self.scalars: dict[str, int | float] = {**binding.sizes, **binding.params}
        self.query_axes = _axes(scope, form.query_rank, binding.sizes)
        self.key_axes = _axes(scope, form.key_rank, binding.sizes)
        coords = batch_coordinates(form, binding)
        self.heads = problem_heads
        self.coords = {rank: values[problem_heads] for rank, values in coords.items()}
        scores = {form.product, *(s.target for s in form.score_maps)}
        self.maps = [
            (s.target, _bind_scores(scope.expand(s.value), scores)) for s in form.score_maps
        ]

    def __call__(self, scores: torch.Tensor, chunk: Chunk) -> torch.Tensor:
        batch, rows, length = scores.shape
        size = chunk.group.query_size
        heads = rows // size
        kv_heads, tiles = chunk.kv1 - chunk.kv0, chunk.t1 - chunk.t0
        shape = (kv_heads, tiles, heads, size, length)
        env: dict[str, object] = dict(self.scalars)
        env.update(coordinates(self.query_axes, chunk.query_tokens().view(1, tiles, 1, size, 1)))
        env.update(coordinates(self.key_axes, chunk.key_tokens().view(1, tiles, 1, 1, length)))
        for rank, values in self.coords.items():
            selected = values.view(-1, heads)[chunk.kv0 : chunk.kv1]
            env[rank] = selected.view(kv_heads, 1, heads, 1, 1)
        env[self.form.product] = scores.view(shape)
        evaluator = Evaluator(env, self.tensors, scores.dtype)  # type: ignore[arg-type]
        value: torch.Tensor = scores
        for target, expr in self.maps:
            value = evaluator.float_tensor(evaluator(expr)).to(scores.dtype)
            env[target] = value
        inside = all_of(evaluator.absent)
        value = value.expand(shape)
        if inside is not None:
            value = value.masked_fill(~inside.expand_as(value), float("-inf"))
        return value.reshape(batch, rows, length)


def _bind_scores(expr: Expr, scores: set[str]) -> Expr:
    """Reads of score tensors become names bound to the chunk (they are read in place)."""

    def swap(node: Expr) -> Expr | None:
        if isinstance(node, Access) and node.tensor in scores:
            return Name(node.tensor)
        return None

    return map_expr(expr, swap)


def _axes(scope: Scope, rank: str, sizes: dict[str, int]) -> Axes:
    axes = scope.grids.get(rank, (rank,))
    return Axes(rank, tuple(axes), tuple(sizes[size_symbol(a)] for a in axes))
