"""The attention mask of a cascade: which (query, key) pairs exist, as one predicate.

:func:`attention_mask` conjoins the predicates of every Einsum whose iteration space holds
both the query and the key rank (grid axes count as their flat rank), ``let`` names
expanded. :meth:`Mask.bind` fixes sizes, parameters, lookup tensors and any other rank the
predicate reads (``b`` in ``doc[b, m]``), leaving an expression over query and key
coordinates only: the form :mod:`~einscade.passes.analysis.intervals` reasons about and
:meth:`BoundMask.evaluate` evaluates densely with torch (the brute-force oracle).

Reads follow the IR semantics: a lookup dimension of extent 1 broadcasts, and an
out-of-range read is an absent point, stated as extra conjuncts ``0 <= i and i < n``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from einscade.codegen.bind import eval_scalar
from einscade.codegen.torch_ops import TORCH_BINARY
from einscade.ir import ops
from einscade.ir.cascade import Cascade, TensorDecl, size_symbol
from einscade.ir.errors import BindError
from einscade.ir.expr import (
    Access,
    Binary,
    Call,
    Expr,
    Name,
    Num,
    Unary,
    accesses,
    conjoin,
    names,
)
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope
from einscade.passes.analysis.interval_core import Box, Env, Interval

Sizes = dict[str, int]
Params = dict[str, int | float]


@dataclass(frozen=True, slots=True)
class Mask:
    """The mask predicate of a cascade between a query and a key rank.

    ``predicate`` is None when every pair exists. ``*_axes`` are the grid axes (the rank
    itself without a grid) and ``*_sizes`` their size symbols. ``lookups`` are the input
    tensors the predicate reads; ``other_ranks`` the ranks besides query and key it reads
    (bound by ``at`` in :meth:`bind`).
    """

    predicate: Expr | None
    query: str
    key: str
    query_axes: tuple[str, ...]
    key_axes: tuple[str, ...]
    query_sizes: tuple[str, ...]
    key_sizes: tuple[str, ...]
    lookups: tuple[TensorDecl, ...]
    other_ranks: tuple[str, ...]
    cascade: Cascade = field(compare=False, repr=False)
    # The names the predicate reads: symbolic, so found once here rather than per bind.
    predicate_names: frozenset[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        used = () if self.predicate is None else names(self.predicate)
        object.__setattr__(self, "predicate_names", frozenset(used))

    def bind(
        self,
        sizes: Sizes | None = None,
        params: Params | None = None,
        lookups: dict[str, torch.Tensor] | None = None,
        at: dict[str, int] | None = None,
    ) -> BoundMask:
        """Fix sizes (completed from size definitions, grids and lookup shapes), parameters
        (defaults filled in), lookup tensors and the other ranks (``at``; a rank whose
        lookup dimensions all have extent 1 defaults to 0)."""
        lookups = dict(lookups or {})
        for decl in self.lookups:
            if decl.name not in lookups:
                raise BindError(f"mask of @{self.cascade.name} reads {decl.name!r}; pass it")
            if lookups[decl.name].dim() != len(decl.ranks):
                raise BindError(
                    f"lookup {decl.name!r} has {lookups[decl.name].dim()} dims, "
                    f"@{self.cascade.name} declares [{', '.join(decl.ranks)}]"
                )
        sizes = _resolve_sizes(self, sizes or {}, lookups)
        bound = _resolve_params(self, sizes, params or {})
        constants: dict[str, int | float] = {**sizes, **bound, **self._other_ranks(at, lookups)}
        predicate = None if self.predicate is None else _concrete(self, constants, lookups)
        query = Axes(self.query, self.query_axes, tuple(sizes[s] for s in self.query_sizes))
        key = Axes(self.key, self.key_axes, tuple(sizes[s] for s in self.key_sizes))
        tables = {name: LookupTable(name, t) for name, t in lookups.items()}
        return BoundMask(predicate, query, key, tables, lookups)

    def evaluate_dense(
        self,
        sizes: Sizes | None = None,
        params: Params | None = None,
        lookups: dict[str, torch.Tensor] | None = None,
        at: dict[str, int] | None = None,
    ) -> torch.Tensor:
        """``BoolTensor[P, M]``: every (query, key) pair, tokens in row-major order."""
        return self.bind(sizes, params, lookups, at).evaluate_dense()

    def _other_ranks(self, at: dict[str, int] | None, lookups: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
        at = dict(at or {})
        for rank in self.other_ranks:
            if rank in at:
                continue
            extents = [
                lookups[d.name].shape[k] for d in self.lookups for k, r in enumerate(d.ranks)
                if r == rank
            ]  # fmt: skip
            if extents and all(n == 1 for n in extents):
                at[rank] = 0
                continue
            raise BindError(
                f"the mask of @{self.cascade.name} reads rank {rank!r}; "
                f"pass at={{{rank!r}: ...}} to pick one"
            )
        return at


@dataclass(frozen=True, eq=False)
class BoundMask:
    """A mask with everything but the query and key coordinates fixed.

    ``predicate`` reads only coordinates (``query.flat``, ``query.names``, and the same for
    ``key``), numbers and the lookups in ``tables``.
    """

    predicate: Expr | None
    query: Axes
    key: Axes
    tables: dict[str, LookupTable]
    lookups: dict[str, torch.Tensor]

    def evaluate(self, query_tokens: torch.Tensor, key_tokens: torch.Tensor) -> torch.Tensor:
        """``BoolTensor[len(query_tokens), len(key_tokens)]`` for flat (row-major) tokens."""
        env = _coordinates(self.query, query_tokens.reshape(-1, 1))
        env.update(_coordinates(self.key, key_tokens.reshape(1, -1)))
        shape = (query_tokens.numel(), key_tokens.numel())
        if self.predicate is None:
            return torch.ones(shape, dtype=torch.bool)
        value = torch.as_tensor(_dense(self.predicate, env, self.lookups))
        return value.to(torch.bool).expand(shape).contiguous()

    def evaluate_dense(self) -> torch.Tensor:
        """``BoolTensor[P, M]`` over all pairs (P * M memory: small cases and tests only)."""
        queries, keys = math.prod(self.query.extents), math.prod(self.key.extents)
        return self.evaluate(torch.arange(queries), torch.arange(keys))


def _coordinates(axes: Axes, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    env = {axes.flat: tokens}
    for name, extent, stride in zip(axes.names, axes.extents, axes.strides, strict=True):
        env[name] = (tokens // stride) % extent
    return env


def attention_mask(cascade: Cascade, query: str = "p", key: str = "m") -> Mask:
    """The conjunction of the predicates of every Einsum iterating both ``query`` and
    ``key`` (grid axes mapped to their flat rank), lets expanded."""
    scope = Scope(cascade)
    for rank in (query, key):
        if rank not in scope.ranks:
            raise ValueError(f"attention_mask: @{cascade.name} has no rank {rank!r}")
    found: list[Expr] = []
    for stmt in cascade.einsums():
        space = {scope.flat_rank(r) for r in scope.iteration_ranks(stmt)}
        if stmt.predicate is None or query not in space or key not in space:
            continue
        predicate = scope.expand(stmt.predicate)
        if predicate not in found:
            found.append(predicate)
    predicate = conjoin(*found)
    query_axes, key_axes = scope.grids.get(query, (query,)), scope.grids.get(key, (key,))
    read = [] if predicate is None else [a.tensor for a in accesses(predicate)]
    lookups = []
    for name in dict.fromkeys(read):
        decl = cascade.input(name)
        if decl is None:
            raise ValueError(f"attention_mask: the mask of @{cascade.name} reads {name!r}, "
                             "which is not an input")  # fmt: skip
        lookups.append(decl)
    coordinates = {query, key, *query_axes, *key_axes}
    used = set() if predicate is None else names(predicate)
    others = sorted(n for n in used if n in scope.ranks and n not in coordinates)
    return Mask(
        predicate,
        query,
        key,
        tuple(query_axes),
        tuple(key_axes),
        tuple(size_symbol(a) for a in query_axes),
        tuple(size_symbol(a) for a in key_axes),
        tuple(lookups),
        tuple(others),
        cascade,
    )


# -- coordinates and lookup tables ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Axes:
    """One side's coordinates: the flat rank (``p``) and its grid axes (``px, py``, or ``p``
    itself without a grid), with the axes' extents."""

    flat: str
    names: tuple[str, ...]
    extents: tuple[int, ...]
    strides: tuple[int, ...] = field(init=False)  # row-major, of the flat rank
    _full: Box = field(init=False, repr=False, compare=False)  # the whole grid, built once

    def __post_init__(self) -> None:
        strides = tuple(math.prod(self.extents[i + 1 :]) for i in range(len(self.extents)))
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "_full", tuple(Interval(0, n - 1) for n in self.extents))

    def full_box(self) -> Box:
        return self._full

    def indices_of(self, name: str) -> list[int]:
        """The axes a coordinate name reads: one axis, or all of them for the flat rank."""
        if name in self.names:
            return [self.names.index(name)]
        return list(range(len(self.names))) if name == self.flat else []

    def bind(self, box: Box, env: Env) -> Env:
        """Put the box's axis intervals and the flat rank's hull into ``env``; return it."""
        env.update(zip(self.names, box, strict=True))
        if len(box) == 1:
            env[self.flat] = box[0]
            return env
        lo = hi = 0
        for (a, b), stride in zip(box, self.strides, strict=True):
            lo += a * stride
            hi += b * stride
        env[self.flat] = Interval(lo, hi)
        return env


def _sparse_tables(values: torch.Tensor) -> tuple[list, list]:  # type: ignore[type-arg]
    """Level k holds the min / max of every run of 2**k values (range queries in O(1)), as
    numpy arrays (built in a few array operations; an element reads in ~100 ns)."""
    base = values.numpy()
    mins, maxs = [base], [base]
    while 1 << len(mins) <= len(base):
        half = 1 << (len(mins) - 1)
        mins.append(np.minimum(mins[-1][:-half], mins[-1][half:]))
        maxs.append(np.maximum(maxs[-1][:-half], maxs[-1][half:]))
    return mins, maxs


def _range(tables: list, lo: int, hi: int, pick: Callable) -> int | float:  # type: ignore[type-arg]
    level = (hi - lo + 1).bit_length() - 1
    table = tables[level]  # ndarray.item(i): one call, a Python number, no numpy scalar
    return pick(table.item(lo), table.item(hi - (1 << level) + 1))


class _Line:
    """One 1-D line of a lookup tensor with its range-min/max and value-position tables."""

    def __init__(self, values: torch.Tensor):
        self.values = values.contiguous()
        self.mins, self.maxs = _sparse_tables(self.values)
        self._by_value: tuple[list, list, list] | None = None  # type: ignore[type-arg]

    def minmax(self, lo: int, hi: int) -> Interval:
        return Interval(_range(self.mins, lo, hi, min), _range(self.maxs, lo, hi, max))

    def positions(self, vlo: float, vhi: float) -> tuple[int, int] | None:
        """First and last position holding a value in ``[vlo, vhi]``, or None."""
        if self._by_value is None:
            self._by_value = self._build_positions()
        uniq, first, last = self._by_value
        i = bisect.bisect_left(uniq, float(vlo))  # Python lists: no tensor op per query
        j = bisect.bisect_right(uniq, float(vhi)) - 1
        if i > j:
            return None
        return int(_range(first, i, j, min)), int(_range(last, i, j, max))

    def _build_positions(self):  # type: ignore[no-untyped-def]
        values = self.values
        uniq, inverse = torch.unique(values, sorted=True, return_inverse=True)
        where = torch.arange(len(values))
        first = torch.full((len(uniq),), len(values)).scatter_reduce(0, inverse, where, "amin")
        last = torch.full((len(uniq),), -1).scatter_reduce(0, inverse, where, "amax")
        return uniq.to(torch.float64).tolist(), _sparse_tables(first)[0], _sparse_tables(last)[1]


class LookupTable:
    """Range queries over a lookup tensor (``doc[b, m]``): min/max over an index box, and the
    first/last position of a line whose value lies in a range. Each 1-D line gets sparse
    tables on first use (O(n log n) once, O(1) per query)."""

    def __init__(self, name: str, values: torch.Tensor):
        self.name = name
        self.values = values.to(torch.int64) if values.dtype == torch.bool else values
        self.shape = tuple(values.shape)
        self._lines: dict[tuple[int, tuple[int, ...]], _Line] = {}

    def line(self, dim: int, fixed: list[int]) -> _Line:
        key = (dim, tuple(fixed[:dim] + fixed[dim + 1 :]))
        if key not in self._lines:
            index: list[int | slice] = list(fixed)
            index[dim] = slice(None)
            self._lines[key] = _Line(self.values[tuple(index)])
        return self._lines[key]

    def over(self, indices: list[Interval]) -> Interval:
        """The values' range over an index box (clipped to the tensor)."""
        lo = [max(int(i[0]), 0) for i in indices]
        hi = [min(int(i[1]), n - 1) for i, n in zip(indices, self.shape, strict=True)]
        if any(a > b for a, b in zip(lo, hi, strict=True)):
            return Interval(0, 0)  # absent everywhere: the range conjuncts decide
        varying = [d for d in range(len(lo)) if lo[d] != hi[d]]
        if not varying:
            value = self.values[tuple(lo)].item()
            return Interval(value, value)
        if len(varying) == 1:
            return self.line(varying[0], lo).minmax(lo[varying[0]], hi[varying[0]])
        block = self.values[tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))]
        return Interval(block.min().item(), block.max().item())


# -- binding -----------------------------------------------------------------------------


def _resolve_sizes(mask: Mask, given: Sizes, lookups: dict[str, torch.Tensor]) -> Sizes:
    """Given sizes, then lookup shapes, size definitions (those computable) and grids."""
    sizes = dict(given)
    for decl in mask.lookups:
        for rank, extent in zip(decl.ranks, lookups[decl.name].shape, strict=True):
            if extent != 1:
                sizes.setdefault(size_symbol(rank), int(extent))
    for size in mask.cascade.sizes:
        try:
            value = int(eval_scalar(size.value, dict(sizes)))
        except BindError:
            continue  # a size the mask may not need (``G = H // HK``)
        if sizes.setdefault(size.name, value) != value:
            raise BindError(f"size {size.name} = {value} by its definition but {sizes[size.name]}"
                            " was given")  # fmt: skip
    for grid in mask.cascade.grids:
        axes = [size_symbol(a) for a in grid.axes]
        if all(a in sizes for a in axes):
            sizes.setdefault(size_symbol(grid.rank), math.prod(sizes[a] for a in axes))
    needed = [(s, a, "query") for s, a in zip(mask.query_sizes, mask.query_axes, strict=True)]
    needed += [(s, a, "key") for s, a in zip(mask.key_sizes, mask.key_axes, strict=True)]
    for symbol, axis, side in needed:
        if symbol not in sizes:
            raise BindError(f"size {symbol} of {side} axis {axis!r} of @{mask.cascade.name} is "
                            f"unknown; pass sizes={{{symbol!r}: ...}}")  # fmt: skip
    return sizes


def _resolve_params(mask: Mask, sizes: Sizes, given: Params) -> Params:
    declared = {p.name: p for p in mask.cascade.params}
    for name in given:
        if name not in declared:
            raise BindError(f"@{mask.cascade.name} has no parameter {name!r}")
    env: dict[str, int | float] = dict(sizes)
    params: Params = {}
    for param in mask.cascade.params:
        if param.name in given:
            value = given[param.name]
        elif param.default is not None:
            try:
                value = eval_scalar(param.default, env)
            except BindError:
                continue  # e.g. ``scale = 1 / sqrt(E)``: not the mask's business
        else:
            continue
        value = int(value) if param.kind == "int" else float(value)
        params[param.name] = env[param.name] = value
    used = mask.predicate_names
    for name in sorted(used & set(declared) - set(params)):
        raise BindError(f"the mask of @{mask.cascade.name} reads parameter {name!r}; "
                        f"pass params={{{name!r}: ...}}")  # fmt: skip
    return params


def _concrete(mask: Mask, constants: dict[str, int | float], lookups) -> Expr:  # type: ignore[no-untyped-def]
    """The predicate over coordinates only: constants substituted and folded, broadcast
    lookup indices set to 0, range conjuncts for reads that may leave the tensor."""
    assert mask.predicate is not None
    decls = {d.name: d for d in mask.lookups}
    coordinate_extent = dict(
        zip(mask.query_axes, _extents(mask.query_sizes, constants), strict=True)
    )
    coordinate_extent.update(zip(mask.key_axes, _extents(mask.key_sizes, constants), strict=True))
    coordinate_extent[mask.query] = constants[size_symbol(mask.query)]
    coordinate_extent[mask.key] = constants[size_symbol(mask.key)]
    ranges: list[Expr] = []

    def read(node: Access) -> Expr:
        return _read(node, decls[node.tensor], lookups[node.tensor], constants, ranges,
                     coordinate_extent)  # fmt: skip

    predicate = _substitute(mask.predicate, constants, read)
    return conjoin(predicate, *dict.fromkeys(ranges))  # type: ignore[return-value]


def _substitute(node: Expr, constants: dict[str, int | float], read: Callable) -> Expr:  # type: ignore[type-arg]
    """``map_expr`` with the rewrite of :func:`_concrete` (constants for names, ``read`` for
    accesses, then :func:`_fold`), children in the same order (``read`` collects range
    conjuncts in it), dispatching on the node type directly: a predicate of a hundred
    nodes is rewritten at every bind. Unchanged subtrees are kept as they are."""
    kind = type(node)
    if kind is Name:
        return Num(constants[node.id]) if node.id in constants else node  # type: ignore[union-attr]
    if kind is Num:
        return node
    if kind is Binary:
        lhs = _substitute(node.lhs, constants, read)  # type: ignore[union-attr]
        rhs = _substitute(node.rhs, constants, read)  # type: ignore[union-attr]
        if lhs is not node.lhs or rhs is not node.rhs:  # type: ignore[union-attr]
            node = Binary(node.op, lhs, rhs, node.loc)  # type: ignore[union-attr]
        constant = type(lhs) is Num and type(rhs) is Num
    elif kind is Unary:
        operand = _substitute(node.operand, constants, read)  # type: ignore[union-attr]
        if operand is not node.operand:  # type: ignore[union-attr]
            node = Unary(node.op, operand, node.loc)  # type: ignore[union-attr]
        constant = type(operand) is Num
    elif kind is Call:
        args = tuple(_substitute(a, constants, read) for a in node.args)  # type: ignore[union-attr]
        if any(a is not b for a, b in zip(args, node.args, strict=True)):  # type: ignore[union-attr]
            node = Call(node.fn, args, node.loc)  # type: ignore[union-attr]
        constant = all(type(a) is Num for a in args)
    elif kind is Access:
        indices = tuple(_substitute(i, constants, read) for i in node.indices)  # type: ignore[union-attr]
        return read(Access(node.tensor, indices, node.loc))  # type: ignore[union-attr]
    else:
        constant = False
    if not constant:  # _fold folds literals only
        return node
    folded = _fold(node)
    return node if folded is None else folded


def _extents(symbols: tuple[str, ...], constants: dict[str, int | float]) -> list[int]:
    return [int(constants[s]) for s in symbols]


def _read(node, decl, tensor, constants, ranges, coordinate_extent) -> Access:  # type: ignore[no-untyped-def]
    """A lookup read: broadcast dims read index 0; others may need a range conjunct."""
    indices: list[Expr] = []
    for dim, index in enumerate(node.indices):
        extent = int(tensor.shape[dim])
        if extent == 1 and constants.get(size_symbol(decl.ranks[dim]), 1) != 1:
            indices.append(Num(0))
            continue
        indices.append(index)
        if isinstance(index, Num) and 0 <= index.value < extent:
            continue
        if isinstance(index, Name) and coordinate_extent.get(index.id, extent + 1) <= extent:
            continue
        ranges.append(Binary("<=", Num(0), index))
        ranges.append(Binary("<", index, Num(extent)))
    return Access(node.tensor, tuple(indices), node.loc)


_FOLDED = ("+", "-", "*")


def _fold(node: Expr) -> Expr | None:
    """Fold integer arithmetic on literals (``8 // 2`` -> ``4``) so the interval rules see
    constant divisors."""
    match node:
        case Binary(op=op, lhs=Num(value=int()), rhs=Num(value=int())) if op in _FOLDED:
            return Num(eval_scalar(node, {}))
        case Binary(op="//" | "%", lhs=Num(value=int()), rhs=Num(value=int() as b)) if b != 0:
            return Num(eval_scalar(node, {}))
        case Unary(op="-", operand=Num(value=v)):
            return Num(-v)
        case Call(fn="min" | "max" | "abs", args=args) if all(isinstance(a, Num) for a in args):
            return Num(eval_scalar(node, {}))
    return None


# -- dense evaluation --------------------------------------------------------------------


def _dense(expr: Expr, env: dict[str, torch.Tensor], lookups: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    """Evaluate a bound predicate by broadcasting (IR semantics: floor ``//``, Python ``%``)."""
    match expr:
        case Num(value=v):
            return v
        case Name(id=name):
            return env[name]
        case Unary(op="not", operand=x):
            return ~torch.as_tensor(_dense(x, env, lookups))
        case Unary(op="-", operand=x):
            return -_dense(x, env, lookups)
        case Binary(op=op, lhs=a, rhs=b) if op in TORCH_BINARY:
            return TORCH_BINARY[op](_dense(a, env, lookups), _dense(b, env, lookups))
        case Call(fn="min" | "max" as fn, args=(a, b)):
            pair = [torch.as_tensor(_dense(x, env, lookups)) for x in (a, b)]
            return torch.minimum(*pair) if fn == "min" else torch.maximum(*pair)
        case Call(fn="abs", args=(a,)):
            return torch.as_tensor(_dense(a, env, lookups)).abs()
        case Access(tensor=name, indices=indices):
            table = lookups[name]
            gathers = [
                torch.as_tensor(_dense(i, env, lookups)).clamp(0, n - 1)
                for i, n in zip(indices, table.shape, strict=True)
            ]  # out-of-range reads are clamped here and masked by the range conjuncts
            return table[tuple(gathers)]
    raise ValueError(f"mask predicate: cannot evaluate {print_expr(expr)!r} (ops: "
                     f"{sorted(ops.INDEX_FUNCTIONS)} and integer arithmetic)")  # fmt: skip
