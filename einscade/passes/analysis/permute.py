"""Token permutation: fold the interleaved groups of a grid axis into their own axis.

A mask conjunct ``px % c == mx % c`` (a query and a key on the same axis, ``c`` dividing the
axis length ``L``) says that only tokens of the same residue class meet: NATTEN's dilation
``d`` (``mx % d == px % d``) and MaxViT's grid attention (``px % (L // size) == ...``). Writing
the coordinate as ``x = c * i + g`` (group ``g < c``, position ``i < L / c``) and ordering the
tokens group-major turns every group into a contiguous sub-grid: dilated neighborhood
attention becomes ``c ** k`` dense neighborhood problems, MaxViT grid attention becomes
blocked attention whose tiles are all full.

:func:`find_folds` reads the fold of each axis off the bound predicate, :func:`fold_mask`
rewrites the predicate over the new axes (``x -> c * x_i + x_g``, then ``(c * i + g) // c ->
i`` and ``(c * i + g) % c -> g`` wherever ``g``'s range allows) and :class:`TokenPermutation`
maps folded tokens back to the original ones. The rewrite is exact: the folded mask at
folded tokens ``(a, b)`` equals the original mask at ``(order[a], order[b])`` (tested against
brute force). In memory the fold is a reshape and transpose of the token axes, so it is a
strided view; a kernel that wants contiguous tokens pays a gather of Q, K, V and a scatter
of the output, which the cost model counts (``cost.permutation_bytes``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from einscade.ir.expr import Binary, Expr, Name, Num, Unary, map_expr
from einscade.passes.analysis.masks import Axes, BoundMask


@dataclass(frozen=True, slots=True)
class TokenPermutation:
    """Folded grid axes: axis ``a`` of length ``extents[a]`` with ``folds[a] = c > 1`` becomes
    a group axis (extent ``c``) and a position axis (``extents[a] // c``); the folded grid is
    row-major over (group axes in axis order, then every position axis)."""

    extents: tuple[int, ...]
    folds: tuple[int, ...]

    @property
    def folded_extents(self) -> tuple[int, ...]:
        groups = tuple(c for c in self.folds if c > 1)
        return groups + tuple(n // c for n, c in zip(self.extents, self.folds, strict=True))

    @property
    def tokens(self) -> int:
        return math.prod(self.extents)

    def order(self) -> torch.Tensor:
        """``LongTensor[N]``: the original (row-major) token at each folded position."""
        strides = [math.prod(self.extents[a + 1 :]) for a in range(len(self.extents))]
        folded = list(self.folded_extents)
        coords = torch.zeros((), dtype=torch.long)
        grids = torch.meshgrid(*(torch.arange(n) for n in folded), indexing="ij")
        groups = iter(grids[: len(folded) - len(self.extents)])
        positions = grids[len(folded) - len(self.extents) :]
        for axis, c in enumerate(self.folds):
            group = next(groups) if c > 1 else 0
            coords = coords + (positions[axis] * c + group) * strides[axis]
        return coords.reshape(-1)

    def describe(self) -> str:
        """``fold 64->2x32, 64->2x32``: each folded axis as groups x positions."""
        parts = [
            f"{n}->{c}x{n // c}" if c > 1 else str(n)
            for n, c in zip(self.extents, self.folds, strict=True)
        ]
        return "fold " + ", ".join(parts)


def find_folds(bound: BoundMask) -> tuple[int, ...] | None:
    """Per query axis, the group count ``c`` of a top-level conjunct ``qx % c == kx % c``
    (either side order) with ``c`` dividing the axis (1 where there is none); None when no
    axis folds or query and key grids differ."""
    if bound.predicate is None or bound.query.extents != bound.key.extents:
        return None
    folds = [1] * len(bound.query.names)
    for conjunct in _conjuncts(bound.predicate):
        found = _residue_match(conjunct, bound.query, bound.key)
        if found is not None:
            axis, c = found
            folds[axis] = math.lcm(folds[axis], c)
    usable = tuple(
        c if 1 < c < n and n % c == 0 else 1
        for c, n in zip(folds, bound.query.extents, strict=True)
    )
    return usable if any(c > 1 for c in usable) else None


def _conjuncts(expr: Expr) -> list[Expr]:
    if isinstance(expr, Binary) and expr.op == "and":
        return _conjuncts(expr.lhs) + _conjuncts(expr.rhs)
    return [expr]


def _residue_match(expr: Expr, query: Axes, key: Axes) -> tuple[int, int] | None:
    match expr:
        case Binary(
            op="==",
            lhs=Binary(op="%", lhs=Name(id=a), rhs=Num(value=int() as c1)),
            rhs=Binary(op="%", lhs=Name(id=b), rhs=Num(value=int() as c2)),
        ) if c1 == c2 and c1 > 1:
            for q, k in ((a, b), (b, a)):
                if q in query.names and k in key.names:
                    axis = query.names.index(q)
                    if key.names.index(k) == axis:
                        return axis, c1
    return None


def fold_mask(bound: BoundMask, folds: tuple[int, ...]) -> BoundMask:
    """The mask over folded coordinates (module doc); query and key fold alike."""
    predicate, query, key = _fold(bound.predicate, bound.query, bound.key, folds)
    return BoundMask(predicate, query, key, bound.tables, bound.lookups)


@functools.lru_cache(maxsize=64)
def _fold(predicate: Expr | None, query: Axes, key: Axes, folds: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """The symbolic rewrite of :func:`fold_mask`, cached per predicate and grids (a pure
    function of them; it reads no tensor)."""
    query_folded, query_map = _folded_axes(query, folds)
    key_folded, key_map = _folded_axes(key, folds)
    ranges = {n: e - 1 for n, e in zip(query_folded.names, query_folded.extents, strict=True)}
    ranges.update(zip(key_folded.names, (n - 1 for n in key_folded.extents), strict=True))
    if predicate is not None:
        bindings = {**query_map, **key_map}
        swapped = map_expr(predicate, lambda n: _swap(n, bindings))
        predicate = map_expr(swapped, lambda n: _simplify(n, ranges))
    return predicate, query_folded, key_folded


def _swap(node: Expr, bindings: dict[str, Expr]) -> Expr | None:
    return bindings.get(node.id) if isinstance(node, Name) else None


def _folded_axes(axes: Axes, folds: tuple[int, ...]) -> tuple[Axes, dict[str, Expr]]:
    """The folded axes (group axes ``x_g``, position axes ``x_i``) and the expression of each
    original coordinate (axes and the flat rank) over them."""
    groups, positions, extents_g, extents_i, exprs = [], [], [], [], {}
    for name, extent, c in zip(axes.names, axes.extents, folds, strict=True):
        if c == 1:
            positions.append(name)
            extents_i.append(extent)
            exprs[name] = Name(name)
            continue
        groups.append(f"{name}_g")
        positions.append(f"{name}_i")
        extents_g.append(c)
        extents_i.append(extent // c)
        exprs[name] = _linear_expr({f"{name}_i": c, f"{name}_g": 1}, 0)
    flat = {n: s for n, s in zip(axes.names, axes.strides, strict=True)}
    terms: Expr | None = None
    for name, stride in flat.items():
        term = exprs[name] if stride == 1 else Binary("*", exprs[name], Num(stride))
        terms = term if terms is None else Binary("+", terms, term)
    bindings = {n: e for n, e in exprs.items() if not (isinstance(e, Name) and e.id == n)}
    if len(axes.names) > 1 or axes.flat not in axes.names:
        bindings[axes.flat] = terms  # type: ignore[assignment]
    folded = Axes(f"{axes.flat}_folded", tuple(groups + positions), tuple(extents_g + extents_i))
    return folded, bindings


# -- simplification of // and % over linear forms ------------------------------------------

Linear = tuple[dict[str, int], int]  # coefficients by name, constant


def _linear(expr: Expr) -> Linear | None:
    match expr:
        case Num(value=int() as v):
            return {}, v
        case Name(id=name):
            return {name: 1}, 0
        case Unary(op="-", operand=x):
            inner = _linear(x)
            return None if inner is None else _scale(inner, -1)
        case Binary(op="+" | "-" as op, lhs=a, rhs=b):
            la, lb = _linear(a), _linear(b)
            if la is None or lb is None:
                return None
            return _add(la, _scale(lb, -1) if op == "-" else lb)
        case Binary(op="*", lhs=a, rhs=b):
            la, lb = _linear(a), _linear(b)
            if la is None or lb is None:
                return None
            if not la[0]:
                return _scale(lb, la[1])
            if not lb[0]:
                return _scale(la, lb[1])
    return None


def _scale(form: Linear, k: int) -> Linear:
    return {n: c * k for n, c in form[0].items()}, form[1] * k


def _add(a: Linear, b: Linear) -> Linear:
    coeffs = dict(a[0])
    for name, c in b[0].items():
        coeffs[name] = coeffs.get(name, 0) + c
    return {n: c for n, c in coeffs.items() if c}, a[1] + b[1]


def _linear_expr(coeffs: dict[str, int], const: int) -> Expr:
    expr: Expr | None = None
    for name, c in coeffs.items():
        term: Expr = Name(name) if c == 1 else Binary("*", Num(c), Name(name))
        expr = term if expr is None else Binary("+", expr, term)
    if expr is None:
        return Num(const)
    if const > 0:
        return Binary("+", expr, Num(const))
    return Binary("-", expr, Num(-const)) if const < 0 else expr


def _simplify(node: Expr, ranges: dict[str, int]) -> Expr | None:
    """``X // c`` and ``X % c`` for linear X: constant and ``X - c * k`` when X stays in one
    period ``[c * k, c * k + c)``; else, for X = c * A + B with 0 <= B < c over the names'
    ranges (names outside ``ranges`` block the rewrite), ``A`` and ``B``."""
    match node:
        case Binary(op="//" | "%" as op, lhs=x, rhs=Num(value=int() as c)) if c > 0:
            form = _linear(x)
            if form is None or any(n not in ranges for n in form[0]):
                return None
            coeffs, const = form
            lo = const + sum(min(k * ranges[n], 0) for n, k in coeffs.items())
            hi = const + sum(max(k * ranges[n], 0) for n, k in coeffs.items())
            if lo // c == hi // c:  # one period: a constant quotient, a shifted remainder
                return Num(lo // c) if op == "//" else _linear_expr(coeffs, const - lo // c * c)
            rest = {n: k % c for n, k in coeffs.items() if k % c}
            low, high = const % c, const % c + sum(k * ranges[n] for n, k in rest.items())
            if not 0 <= low <= high < c:
                return None
            if op == "%":
                return _linear_expr(rest, const % c)
            quotient = {n: k // c for n, k in coeffs.items() if k // c}
            return _linear_expr(quotient, const // c)
    return None
