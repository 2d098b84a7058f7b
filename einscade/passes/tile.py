"""tile: split the query rank into tiles (1-D ranges or boxes of a grid) and set the key
tile size of the 1-pass loop.

``tile{p=128,m=64}`` replaces the query rank ``p`` by ``(p1, p0)`` with ``p = p1 * P0 + p0``;
on a grid, ``tile{p=8x16}`` makes each query tile an 8 x 16 box, ``p0`` enumerating the box
row-major and ``p1`` the boxes. The key tile size becomes the block of the online loop
(``size M0``); a cascade that has no loop over ``m`` yet (sigmoid attention, already one
pass) gets one, its sums over ``m`` carried across tiles. Outputs keep their layout: the
tiled result is written back through the inverse index map. Points of a partial tile beyond
the grid are computed on wrapped coordinates and never read back (kernels mask them).

Before::

    AV[b, h, p, f] = SNV[b, h, p, f] / SD[b, h, p]

After ``tile{p=128}``::

    size P0 = 128
    size P1 = (P + P0 - 1) // P0
    AVT[b, h, p1, p0, f] = SNV[b, h, p1, p0, f] / SD[b, h, p1, p0]
    AV[b, h, p, f] = AVT[b, h, p // P0, p % P0, f]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from einscade.codegen.bind import eval_scalar
from einscade.ir.cascade import Cascade, Einsum, Iterate, Let, SizeDef, Statement, size_symbol
from einscade.ir.errors import BindError, EinscadeError
from einscade.ir.expr import Access, Binary, Expr, Name, Num, accesses
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope
from einscade.passes.base import Note, Pass, PassResult, register
from einscade.passes.naming import fresh_name
from einscade.passes.online_softmax import Decline, OnlineForm
from einscade.passes.rank_split import RankSplit, flat_coordinate, row_major_axes


def _horner(digits: list[Expr], radices: list[Expr]) -> Expr:
    """digits[0] * radices[1] * ... + digits[-1]: a row-major linear index."""
    value = digits[0]
    for digit, radix in zip(digits[1:], radices[1:], strict=True):
        value = Binary("+", Binary("*", value, radix), digit)
    return value


def _ceil_div(a: Expr, b: Expr) -> Expr:
    return Binary("//", Binary("-", Binary("+", a, b), Num(1)), b)


@dataclass(frozen=True)
class _QueryTiling:
    """Names and formulas of a query split (1-D or box of a grid)."""

    split: RankSplit
    sizes: tuple[SizeDef, ...]
    inverse: tuple[Expr, Expr]  # (p1, p0) as functions of p


def _plan_query(cascade: Cascade, rank: str, tile: tuple[int, ...], taken: set[str]):  # type: ignore[no-untyped-def]
    scope = Scope(cascade)
    axes = scope.grids.get(rank, ())
    outer, inner = fresh_name(rank + "1", taken), fresh_name(rank + "0", taken)
    if len(tile) == 1 and len(axes) <= 1:
        size, count = size_symbol(inner), size_symbol(outer)
        coordinate = flat_coordinate(outer, inner)
        sizes = (
            SizeDef(size, Num(tile[0])),
            SizeDef(count, _ceil_div(Name(size_symbol(rank)), Name(size))),
        )
        inverse = (Binary("//", Name(rank), Name(size)), Binary("%", Name(rank), Name(size)))
        split = RankSplit(
            rank, outer, inner, coordinate, row_major_axes(axes, coordinate), frozenset()
        )
        return _QueryTiling(split, sizes, inverse)
    if len(tile) != len(axes):
        raise EinscadeError(f"tile: {rank!r} has {len(axes) or 1} axes, got a {len(tile)}-D tile")
    extents = [Name(size_symbol(a)) for a in axes]
    box = [Name(fresh_name(size_symbol(a) + "0", taken)) for a in axes]
    counts = [Name(fresh_name(size_symbol(a) + "1", taken)) for a in axes]
    sizes = tuple(SizeDef(b.id, Num(t)) for b, t in zip(box, tile, strict=True))
    sizes += tuple(
        SizeDef(c.id, _ceil_div(e, b)) for c, e, b in zip(counts, extents, box, strict=True)
    )
    sizes += (
        SizeDef(size_symbol(inner), _product(box)),
        SizeDef(size_symbol(outer), _product(counts)),
    )
    tile_index = _digits(Name(outer), counts)
    offset = _digits(Name(inner), box)
    axis_values = {
        a: Binary("+", Binary("*", t, b), o)
        for a, t, b, o in zip(axes, tile_index, box, offset, strict=True)
    }
    coordinate = _horner([Name(a) for a in axes], extents)  # the axes become lets
    flat_axes = row_major_axes(axes, Name(rank))
    inverse = (
        _horner([Binary("//", flat_axes[a], b) for a, b in zip(axes, box, strict=True)], counts),
        _horner([Binary("%", flat_axes[a], b) for a, b in zip(axes, box, strict=True)], box),
    )
    split = RankSplit(rank, outer, inner, coordinate, axis_values, frozenset())
    return _QueryTiling(split, sizes, inverse)


def _product(factors: list[Name]) -> Expr:
    result: Expr = factors[0]
    for factor in factors[1:]:
        result = Binary("*", result, factor)
    return result


def _digits(flat: Expr, radices: list[Name]) -> list[Expr]:
    """The row-major digits of ``flat`` in the given radices."""
    digits: list[Expr] = []
    for k in range(len(radices)):
        later = radices[k + 1 :]
        value = Binary("//", flat, _product(later)) if later else flat
        digits.append(value if k == 0 else Binary("%", value, radices[k]))
    return digits


class _Tiler:
    def __init__(self, cascade: Cascade, rank: str, tile: tuple[int, ...]):
        self.cascade = cascade
        self.scope = Scope(cascade)
        self.rank = rank
        self.taken = self.scope.taken_names()
        self.plan = _plan_query(cascade, rank, tile, self.taken)
        carried = frozenset(
            t for t, info in self.scope.tensors.items() if rank in info.ranks and not info.is_input
        )
        _check_reads(cascade, carried, rank)
        self.split, self.axis_lets = replace(self.plan.split, split=carried).with_axis_lets()
        self.renamed = {t: fresh_name(t + "T", self.taken) for t in cascade.outputs if t in carried}

    def einsum(self, stmt: Einsum) -> Einsum:
        if stmt.reduce is not None and self.rank in stmt.reduce.ranks:
            raise EinscadeError(f"tile: {stmt.target} reduces the query rank {self.rank!r}")
        indices = stmt.indices
        if stmt.target in self.split.split:
            indices = self.split.indices(stmt.target, indices)
        predicate = None if stmt.predicate is None else self.split.expr(stmt.predicate)
        target = self.renamed.get(stmt.target, stmt.target)
        value = self.split.expr(stmt.value)
        value = _rename(value, self.renamed)
        return replace(stmt, target=target, indices=indices, value=value, predicate=predicate)

    def statement(self, stmt: Statement) -> Statement:
        if isinstance(stmt, Iterate):
            return replace(stmt, body=tuple(self.einsum(s) for s in stmt.body))
        return self.einsum(stmt)

    def untile(self, output: str) -> Einsum:
        info = self.scope.tensors[output]
        lhs = tuple(Name(r) for r in info.ranks)
        indices: list[Expr] = []
        for rank in info.ranks:
            indices += list(self.plan.inverse) if rank == self.rank else [Name(rank)]
        return Einsum(output, lhs, Access(self.renamed[output], tuple(indices)))

    def run(self) -> Cascade:
        body = tuple(self.statement(s) for s in self.cascade.body)
        body += tuple(self.untile(t) for t in self.cascade.outputs if t in self.renamed)
        return replace(
            self.cascade,
            body=body,
            sizes=self.cascade.sizes + self.plan.sizes,
            grids=tuple(g for g in self.cascade.grids if g.rank != self.rank),
            lets=self.axis_lets
            + tuple(Let(x.name, self.split.expr(x.value), x.loc) for x in self.cascade.lets),
        )


def _check_reads(cascade: Cascade, carried: frozenset[str], rank: str) -> None:
    """Every read of a split tensor must index its query dimension by the query rank itself
    (chunked linear attention reads FQ at key positions: such a cascade cannot be tiled)."""
    scope = Scope(cascade)
    for stmt in cascade.einsums():
        parts = [stmt.value, *([stmt.predicate] if stmt.predicate is not None else [])]
        for node in (a for part in parts for a in accesses(part)):
            if node.tensor not in carried:
                continue
            dim = scope.tensors[node.tensor].ranks.index(rank)
            if node.indices[dim] != Name(rank):
                index = print_expr(node.indices[dim])
                raise EinscadeError(f"tile: {node.tensor} is read at {index}, not at {rank!r}")


def _rename(expr: Expr, renamed: dict[str, str]) -> Expr:
    from einscade.ir.expr import map_expr

    def swap(node: Expr) -> Expr | None:
        if isinstance(node, Access) and node.tensor in renamed:
            return Access(renamed[node.tensor], node.indices, node.loc)
        return None

    return map_expr(expr, swap) if renamed else expr


def _key_block(cascade: Cascade, key: str, block: int) -> tuple[Cascade, str]:
    """Set the block of the loop over ``key``'s tiles, or make that loop."""
    extent = Name(size_symbol(key))
    for count in cascade.sizes:
        value = count.value
        # The loop online-softmax made: size M1 = (M + M0 - 1) // M0
        if (
            isinstance(value, Binary)
            and isinstance(value.rhs, Name)
            and value == _ceil_div(extent, value.rhs)
        ):
            sizes = tuple(
                SizeDef(s.name, Num(block), s.loc) if s.name == value.rhs.id else s
                for s in cascade.sizes
            )
            return replace(cascade, sizes=sizes), f"key tiles of {block} ({value.rhs.id})"
    try:
        return OnlineForm(cascade, key, block, force=True).build(), f"new loop over {key!r} tiles"
    except Decline as why:
        raise EinscadeError(f"tile: cannot tile {key!r}: {why}") from None


def parse_tile(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise EinscadeError(f"tile: expected sizes like 128 or 8x16, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise EinscadeError(f"tile: tile sizes must be positive, got {text!r}")
    return sizes


@register
@dataclass(frozen=True)
class Tile(Pass):
    """Query tiles (``p=128`` or ``p=8x16`` on a grid) and the key block (``m=64``)."""

    name = "tile"
    p: str = ""
    m: int = 0
    query: str = "p"
    key: str = "m"

    def run(self, cascade: Cascade) -> PassResult:
        notes: list[Note] = []
        if self.m:
            cascade, how = _key_block(cascade, self.key, self.m)
            notes.append(Note("rewrite", how))
        if self.p:
            tile = parse_tile(self.p)
            _check_divisible(cascade, self.query, tile, notes)
            cascade = _Tiler(cascade, self.query, tile).run()
            notes.append(Note("rewrite", f"query tiles of {self.p} over {self.query!r}"))
        return PassResult(cascade, tuple(notes))


def _check_divisible(cascade: Cascade, rank: str, tile: tuple[int, ...], notes: list[Note]) -> None:
    """Say (at debug 3) when a grid axis leaves partial tiles: they cost padding."""
    axes = Scope(cascade).grids.get(rank, ())
    env: dict[str, int | float] = {}
    for size in cascade.sizes:
        try:
            env[size.name] = eval_scalar(size.value, env)
        except BindError:
            continue
    for axis, t in zip(axes, tile, strict=False):
        extent = env.get(size_symbol(axis))
        if isinstance(extent, int) and extent % t:
            notes.append(Note("decline", f"axis {axis} = {extent} is not a multiple of {t}"))
