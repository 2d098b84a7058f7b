"""Block layouts: the classified tiles of one mask, and their export to FlexAttention.

A :class:`BlockLayout` lists, for each query tile, the key tiles that may hold allowed
(query, key) pairs, each a :class:`KeyTile` marked full (every pair allowed: no element mask
needed) or partial. :meth:`BlockLayout.to_block_mask_arrays` gives FlexAttention's BlockMask
arrays (grid key mode); :func:`count_allowed` counts the allowed pairs exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from einscade.passes.analysis.masks import BoundMask


@dataclass(frozen=True, slots=True)
class KeyTile:
    """A key tile of one query tile: its origin and shape in the layout's key coordinates."""

    origin: tuple[int, ...]
    shape: tuple[int, ...]
    full: bool
    size: int = dataclasses.field(init=False, repr=False, compare=False)  # keys in the tile

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", math.prod(self.shape))


class BlockMaskArrays(NamedTuple):
    """FlexAttention's BlockMask data for one (batch, head): int32, partial and full blocks
    listed first in increasing order, the other block indices after them."""

    kv_num_blocks: torch.Tensor  # [Qblk]
    kv_indices: torch.Tensor  # [Qblk, KVblk]
    full_kv_num_blocks: torch.Tensor  # [Qblk]
    full_kv_indices: torch.Tensor  # [Qblk, KVblk]


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """The classified tiles of one mask.

    Tile origins and shapes are in the coordinates named by ``query_axes`` / ``key_axes``
    (the grid axes, or the flat rank for row-major token tiles), whose extents are
    ``query_grid`` / ``key_grid``. ``num_empty`` counts, in grid mode, the tile pairs not
    visited (no allowed pair); in box mode, the candidate boxes found empty.
    ``computed_elements`` sums query tile size x key tile size over the visited tiles
    (padding included); ``useful_elements`` is the exact number of allowed pairs, when
    counted (``classify(..., count_useful=True)``).
    """

    key_mode: str
    query_axes: tuple[str, ...]
    query_grid: tuple[int, ...]
    query_tile: tuple[int, ...]
    query_origins: tuple[tuple[int, ...], ...]
    query_shapes: tuple[tuple[int, ...], ...]
    key_axes: tuple[str, ...]
    key_grid: tuple[int, ...]
    key_tile: tuple[int, ...] | None
    key_tiles: tuple[tuple[KeyTile, ...], ...]
    num_empty: int
    num_partial: int
    num_full: int
    computed_elements: int
    useful_elements: int | None = None

    @property
    def num_visited(self) -> int:
        return self.num_partial + self.num_full

    @property
    def work_ratio(self) -> float | None:
        """Computed over useful elements (None until useful elements are counted)."""
        if not self.useful_elements:
            return None
        return self.computed_elements / self.useful_elements

    def query_size(self, index: int) -> int:
        return math.prod(self.query_shapes[index])

    def work_per_query_tile(self) -> tuple[int, ...]:
        """Computed elements (padding included) of each query tile, in tile order."""
        return tuple(
            self.query_size(i) * sum(t.size for t in tiles)
            for i, tiles in enumerate(self.key_tiles)
        )

    def tile_work(self) -> Iterator[tuple[int, KeyTile, int]]:
        """(query tile index, key tile, elements computed) for every visited tile."""
        for i, tiles in enumerate(self.key_tiles):
            for tile in tiles:
                yield i, tile, self.query_size(i) * tile.size

    def query_tokens(self, index: int) -> torch.Tensor:
        """Flat (row-major) token indices of a query tile, in row-major order of the tile."""
        return _tokens(self.query_origins[index], self.query_shapes[index], self.query_grid)

    def key_tokens(self, tile: KeyTile) -> torch.Tensor:
        """Flat (row-major) token indices of a key tile."""
        return _tokens(tile.origin, tile.shape, self.key_grid)

    def key_tile_index(self, tile: KeyTile) -> int:
        """Row-major index of a grid-mode key tile in the grid of key tiles."""
        assert self.key_tile is not None
        counts = tile_counts(self.key_grid, self.key_tile)
        index = 0
        for origin, size, count in zip(tile.origin, self.key_tile, counts, strict=True):
            index = index * count + origin // size
        return index

    def to_block_mask_arrays(self) -> BlockMaskArrays:
        """FlexAttention-style arrays (grid key mode; with 1-D token tiles on both sides these
        are exactly ``create_block_mask``'s for one batch and head)."""
        if self.key_mode != "grid" or self.key_tile is None:
            raise ValueError("to_block_mask_arrays needs key_mode='grid': box tiles have no index")
        num_kv = math.prod(tile_counts(self.key_grid, self.key_tile))
        partial = torch.zeros(len(self.key_tiles), num_kv, dtype=torch.bool)
        full = torch.zeros_like(partial)
        for i, tiles in enumerate(self.key_tiles):
            for tile in tiles:
                (full if tile.full else partial)[i, self.key_tile_index(tile)] = True
        return BlockMaskArrays(*_ordered(partial), *_ordered(full))


def _ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts per row and indices with the chosen blocks first (FlexAttention's order)."""
    order = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
    return dense.sum(-1).to(torch.int32), order.to(torch.int32)


def _tokens(origin: tuple[int, ...], shape: tuple[int, ...], grid: tuple[int, ...]):  # type: ignore[no-untyped-def]
    tokens = torch.zeros((), dtype=torch.long)
    for axis, (o, s) in enumerate(zip(origin, shape, strict=True)):
        stride = math.prod(grid[axis + 1 :])
        tokens = tokens.unsqueeze(-1) + torch.arange(o, o + s) * stride
    return tokens.reshape(-1)


def tile_counts(grid: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...]:
    """Tiles per dimension (tails count as tiles)."""
    return tuple(-(-g // t) for g, t in zip(grid, tile, strict=True))


Row = tuple[int, tuple[KeyTile, ...]]  # (query tile size, its visited key tiles)


def count_allowed(layout: BlockLayout, bound: BoundMask) -> int:
    """Exact number of allowed pairs: full tiles by size, partial tiles by brute force over
    their elements (visited tiles hold every allowed pair and do not overlap)."""
    total = 0
    for i, tiles in enumerate(layout.key_tiles):
        queries = layout.query_tokens(i)
        for tile in tiles:
            if tile.full:
                total += len(queries) * tile.size
            else:
                total += int(bound.evaluate(queries, layout.key_tokens(tile)).sum())
    return total
