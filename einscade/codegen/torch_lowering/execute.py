"""The hot path: run a plan's tile groups, chunk by chunk.

For a chunk of a group's tiles (the chunk bounds the working set), three steps (the
matmul kernel; a score map that is only a scale runs in the native kernel instead,
:mod:`einscade.codegen.native`, where it is built)::

    S = baddbmm(bias, Q_tiles, K_tiles^T, alpha=scale)   # the mask rides on the GEMM's C
    S = score map(S); softmax(S)                         # in place, per query tile
    O = bmm(S, V_tiles)                                  # into the output, or scattered

Three ways to get the tiles, cheapest first (chosen per group):

- *flat window*: every key head at once through strided views of the flat
  ``[heads * tokens, dim]`` tensors, when the key ranges start at evenly spaced tokens and
  the spacing carries over from one head to the next (a sliding window over whole
  sequences). Tiles between the group's runs in two heads ("junk" tiles) are computed
  too and overwritten by the other groups, which therefore run after it.
- *gathered*: every key head at once; Q, K, V rows gathered with flat index tensors built
  once per group (plain row copies), the result scattered back with the query index.
- *windowed*: one key head at a time, K and V as overlapping strided views (no copy).

The query heads sharing a key head (GQA) are stacked along the rows of one matmul, so K
and V are never repeated. Buffers come from :mod:`.workspace`; few large operations keep
the cost of each parallel region's start and join small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from einscade.codegen.torch_lowering import workspace
from einscade.codegen.torch_lowering.plan import Plan, TileGroup
from einscade.codegen.torch_lowering.workers import run as workers_run

ScoreMap = Callable[[torch.Tensor, "Chunk"], torch.Tensor]
_softmax_ = torch.ops.aten._softmax.out  # in place with out=input (row-wise, safe)
DEFAULT_BUDGET = 1 << 19  # score elements per chunk: 2 MB in fp32, about a core's L2
_MIN_CHUNK = 1 << 16  # smaller chunks cost more in Python than they gain in balance


@dataclass(frozen=True, slots=True)
class Chunk:
    """A score chunk ``[kv heads * tiles, G * Tq, Lk]``: key heads ``[kv0, kv1)``, tiles
    ``[t0, t1)`` of ``group``."""

    group: TileGroup
    kv0: int
    kv1: int
    t0: int
    t1: int

    def key_tokens(self) -> torch.Tensor:
        return self.group.keys[self.t0 : self.t1]

    def query_tokens(self) -> torch.Tensor:
        return self.group.queries[self.t0 : self.t1]


@dataclass(frozen=True, slots=True)
class Kernel:
    """How a chunk computes ``softmax(map(scale * Q K^T) + mask) V``: matmul, then the
    score map (None: only the scale), mask and softmax on the scores, then matmul."""

    scale: float
    score_map: ScoreMap | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Canonical operands: ``q [BK, G, P, E]``, ``k [BK, M, E]``, ``v [BK, M, F]``
    (query head ``kv * G + g`` reads key head ``kv``), contiguous; ``out [BK, G, P, F]``."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor

    @property
    def heads(self) -> int:
        return self.q.shape[1]


def run_plan(
    plan: Plan,
    problem: Problem,
    kernel: Kernel,
    budget: int = DEFAULT_BUDGET,
    workers: int = 1,
) -> None:
    """Fill ``problem.out`` for every query token of the plan (rows that see no key: 0).

    The chunks (at most ``budget`` score elements each) are independent; with ``workers``
    > 1 they run on that many threads (a flat-window group first: the others overwrite its
    junk tiles)."""
    flat = None
    if problem.heads == 1 and kernel.score_map is None and problem.k.shape[0] > 1:
        flat = plan.flat_group
    if workers > 1:  # enough chunks to keep every worker busy (and to balance them)
        total = plan.computed_elements * problem.k.shape[0] * problem.heads
        budget = min(budget, max(total // (4 * workers), _MIN_CHUNK))
    phases: list[list[Callable[[], None]]] = []
    if flat is not None:
        phases.append(_flat_window(problem, flat, kernel, budget))
    rest: list[Callable[[], None]] = []
    for group in plan.groups:
        if group is flat:
            continue
        if group.window is not None and not _gather_instead(group, problem):
            rest.extend(_per_head(problem, group, kernel, budget))
        else:
            rest.extend(_all_heads(problem, group, kernel, budget))
    phases.append(rest)
    for tasks in phases:
        workers_run(tasks, workers)
    if plan.dead.numel():
        problem.out.index_fill_(2, plan.dead, 0.0)


def _gather_instead(group: TileGroup, problem: Problem) -> bool:
    """Gather a windowed group when its copies are small and there are several key heads:
    one set of operations instead of one per key head."""
    return problem.k.shape[0] > 2 and group.num_tiles * group.key_count <= problem.k.shape[1]


def _scores(queries, keys, bias, scale: float, fused: bool) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``scale * Q K^T`` into the scores buffer, plus the bias when ``fused`` (a bias of
    one tile over all columns broadcasts over the batch as the GEMM's C)."""
    shape = (queries.shape[0], queries.shape[1], keys.shape[1])
    scores = workspace.buffer("scores", shape, queries.dtype)
    if fused:
        return torch.baddbmm(bias, queries, keys.transpose(1, 2), alpha=scale, out=scores)
    return torch.baddbmm(scores, queries, keys.transpose(1, 2), beta=0.0, alpha=scale,
                         out=scores)  # fmt: skip


def _fusable(group: TileGroup, bias, heads: int, score_map) -> bool:  # type: ignore[no-untyped-def]
    return (
        bias is not None and score_map is None and heads == 1
        and group.mask_from == 0 and bias.shape[0] == 1
    )  # fmt: skip


def _attend(queries, keys, values, out, bias, kernel: Kernel, chunk: Chunk, heads: int) -> None:  # type: ignore[no-untyped-def]
    """``out = softmax(score map(scale * Q K^T) + bias) @ V`` for a batch of tiles; the
    bias covers the group's masked columns and broadcasts over heads (and tiles when it
    is shared)."""
    group = chunk.group
    score_map = kernel.score_map
    fused = _fusable(group, bias, heads, score_map)
    scores = _scores(queries, keys, bias, kernel.scale, fused)
    if score_map is not None:
        scores = score_map(scores, chunk)
    if bias is not None and not fused:
        tiles = chunk.t1 - chunk.t0
        masked = scores.view(-1, tiles, heads, group.query_size, group.key_count)
        part = bias if bias.shape[0] == 1 else bias[chunk.t0 : chunk.t1]
        masked[..., group.mask_from :].add_(part.view(1, part.shape[0], 1, *part.shape[1:]))
    _softmax_(scores, -1, False, out=scores)
    torch.bmm(scores, values, out=out)


def _all_heads(problem: Problem, group: TileGroup, kernel: Kernel, budget: int):  # type: ignore[no-untyped-def]
    """Tasks over chunks of tiles, every key head at once: gather, attend, scatter."""
    kv_heads, heads = problem.k.shape[0], problem.heads
    rows = heads * group.query_size
    step = max(1, budget // (rows * group.key_count * kv_heads))
    bias = group.bias(problem.q.dtype)
    tasks = []
    for t0 in range(0, group.num_tiles, step):
        t1 = min(t0 + step, group.num_tiles)
        indices = group.flat_indices(kv_heads, heads, problem.q.shape[2], problem.k.shape[1],
                                     t0, t1)  # fmt: skip
        chunk = Chunk(group, 0, kv_heads, t0, t1)
        tasks.append(partial(_gathered, problem, chunk, indices, bias, kernel))
    return tasks


def _gathered(problem: Problem, chunk: Chunk, indices, bias, kernel: Kernel) -> None:  # type: ignore[no-untyped-def]
    q, k, v, out = problem.q, problem.k, problem.v, problem.out
    group, query_rows, key_rows = chunk.group, indices[0], indices[1]
    count = k.shape[0] * (chunk.t1 - chunk.t0)
    rows = problem.heads * group.query_size
    queries = _gather(q, query_rows, (count, rows), "queries")
    keys = _gather(k, key_rows, (count, group.key_count), "keys")
    values = _gather(v, key_rows, (count, group.key_count), "values")
    result = workspace.buffer("result", (count, rows, v.shape[-1]), q.dtype)
    _attend(queries, keys, values, result, bias, kernel, chunk, problem.heads)
    out.view(-1, out.shape[-1]).index_copy_(0, query_rows, result.view(-1, out.shape[-1]))


def _gather(source: torch.Tensor, rows: torch.Tensor, shape: tuple[int, int], name: str):  # type: ignore[no-untyped-def]
    flat = source.view(-1, source.shape[-1])
    target = workspace.buffer(name, (*shape, source.shape[-1]), source.dtype)
    torch.index_select(flat, 0, rows, out=target.view(-1, source.shape[-1]))
    return target


def _flat_window(problem: Problem, group: TileGroup, kernel: Kernel, budget: int):  # type: ignore[no-untyped-def]
    """Tasks over every key head at once through views of the flat tensors (module doc)."""
    size, length = group.query_size, group.key_count
    start, step = group.window  # type: ignore[misc]
    per_head = problem.q.shape[2] // size
    first = group.query_start // size  # type: ignore[operator]
    base = start - first * step  # key token of flat tile 0
    last = (problem.k.shape[0] - 1) * per_head + first + group.num_tiles  # past the last tile
    bias = group.bias(problem.q.dtype)
    tiles = max(1, budget // (size * length))
    return [
        partial(_flat_chunk, problem, group, n0, min(n0 + tiles, last), base, bias, kernel)
        for n0 in range(first, last, tiles)
    ]


def _flat_chunk(problem: Problem, group: TileGroup, n0, n1, base, bias, kernel) -> None:  # type: ignore[no-untyped-def]
    q, k, v, out = problem.q, problem.k, problem.v, problem.out
    size, length, step = group.query_size, group.key_count, group.window[1]  # type: ignore[index]
    queries = q.view(-1, q.shape[-1])[n0 * size : n1 * size].view(n1 - n0, size, -1)
    keys = _flat_view(k, base + n0 * step, step, n1 - n0, length)
    values = _flat_view(v, base + n0 * step, step, n1 - n0, length)
    target = out.view(-1, out.shape[-1])[n0 * size : n1 * size].view(n1 - n0, size, -1)
    chunk = Chunk(group, 0, 1, 0, n1 - n0)  # the bias is one tile's: shared by all
    _attend(queries, keys, values, target, bias, kernel, chunk, 1)


def _flat_view(k: torch.Tensor, row: int, step: int, tiles: int, length: int) -> torch.Tensor:
    """``[tiles, length, dim]`` windows of the flat ``k`` starting at ``row``, ``step`` apart."""
    width = k.shape[-1]
    offset = k.storage_offset() + row * width
    return k.as_strided((tiles, length, width), (step * width, width, 1), offset)


def _per_head(problem: Problem, group: TileGroup, kernel: Kernel, budget: int):  # type: ignore[no-untyped-def]
    """Tasks over (key head, chunk of tiles): K and V tiles are strided views (no copy)."""
    rows = problem.heads * group.query_size
    step = max(1, budget // (rows * group.key_count))
    bias = group.bias(problem.q.dtype)
    tasks = []
    for kv in range(problem.k.shape[0]):
        for t0 in range(0, group.num_tiles, step):
            t1 = min(t0 + step, group.num_tiles)
            chunk = Chunk(group, kv, kv + 1, t0, t1)
            tasks.append(partial(_windowed, problem, chunk, bias, kernel))
    return tasks


def _windowed(problem: Problem, chunk: Chunk, bias, kernel: Kernel) -> None:  # type: ignore[no-untyped-def]
    group, kv, t0, t1 = chunk.group, chunk.kv0, chunk.t0, chunk.t1
    heads, size = problem.heads, group.query_size
    out = problem.out[kv]
    queries = _query_rows(problem.q[kv], group, t0, t1)
    keys = _window(problem.k[kv], group, t0, t1)
    values = _window(problem.v[kv], group, t0, t1)
    if heads == 1 and group.query_start is not None:
        first = group.query_start + t0 * size
        target = out[0, first : first + (t1 - t0) * size].view(t1 - t0, size, -1)
        _attend(queries, keys, values, target, bias, kernel, chunk, heads)
        return
    result = workspace.buffer("result", (t1 - t0, heads * size, out.shape[-1]), out.dtype)
    _attend(queries, keys, values, result, bias, kernel, chunk, heads)
    _scatter_heads(out, group, t0, t1, result)


def _scatter_heads(out: torch.Tensor, group: TileGroup, t0: int, t1: int, result) -> None:  # type: ignore[no-untyped-def]
    """Rows of ``result [tiles, G * Tq, F]`` (head-major) into ``out [G, P, F]``."""
    heads, size = out.shape[0], group.query_size
    result = result.view(t1 - t0, heads, size, -1).transpose(0, 1)
    if group.query_start is not None:
        first = group.query_start + t0 * size
        out[:, first : first + (t1 - t0) * size].view(heads, t1 - t0, size, -1).copy_(result)
        return
    out.index_copy_(1, group.queries[t0:t1].reshape(-1), result.reshape(heads, -1, out.shape[-1]))


def _query_rows(q: torch.Tensor, group: TileGroup, t0: int, t1: int) -> torch.Tensor:
    """``[tiles, G * Tq, E]`` of one key head's ``q [G, P, E]``, query heads head-major."""
    heads, size = q.shape[0], group.query_size
    if group.query_start is not None:
        first = group.query_start + t0 * size
        rows = q[:, first : first + (t1 - t0) * size]
    else:
        rows = q.index_select(1, group.queries[t0:t1].reshape(-1))
    rows = rows.view(heads, t1 - t0, size, q.shape[-1])
    if heads == 1:
        return rows[0]
    return rows.transpose(0, 1).reshape(t1 - t0, heads * size, q.shape[-1])


def _window(k: torch.Tensor, group: TileGroup, t0: int, t1: int) -> torch.Tensor:
    """``[tiles, Lk, E]``: overlapping strided view of one head's ``k [M, E]``."""
    assert group.window is not None
    start, step = group.window
    row, col = k.stride()
    offset = k.storage_offset() + (start + t0 * step) * row
    return k.as_strided((t1 - t0, group.key_count, k.shape[1]), (step * row, row, col), offset)
