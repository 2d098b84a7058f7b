"""The block layout a block-sparse kernel reads: computed at launch, cached, as int32 arrays.

``classify`` (``einscade.passes.analysis.blocks``) sorts the key tiles of each query tile
into empty, partial and full for the sizes, parameters and lookup tensors of a launch. The
kernel's query tiles are the layout's: ``P0`` rows, or boxes ``PX0 x PY0 ...`` of a grid in
row-major order of their origins, as the tile pass numbers them. Its key tiles, of ``M0``
keys each, come in two modes:

- ``grid``: 1-D tiles of ``M0`` row-major tokens; a tile's index is the kernel's ``m1``.
- ``box``: one key box per query tile (the bounding box of its keys on the key grid,
  ``classify(..., key_mode="box")``), cut into *chunks* of ``M0`` keys: chunk ``c`` holds
  the box's points ``c * M0 .. c * M0 + M0 - 1`` in row-major order. The kernel's ``m1`` is
  a chunk id; ``CHUNK_BASE`` (token of the box origin), ``CHUNK_START``, ``CHUNK_SIZE``
  (points in the box) and ``CHUNK_EXTENT`` (the box's extent on each axis) turn it into key
  tokens (``schedule.py``). A 14 x 14 neighborhood visits 196 keys this way, where 1-D
  tiles of a 56-wide grid cover whole rows.

For each query tile (and each value of the batch ranks the mask reads, e.g. ``b`` of
``doc[b, m]``) the kernel gets two lists, in increasing order: partial tiles (some pair
absent, or a tile that overhangs the end of the keys or of its box: the full-tile body has
no range check) and full ones.

A layout depends on the sizes and the mask's parameters, and on the contents of lookup
tensors (document ids): it is cached under all three (lookups by a digest of their bytes,
so a new document split is classified again, an unchanged one is not), in one
``LayoutSource`` per cascade and tiling that every build of the kernel shares.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from einscade.codegen.triton.plan import KernelError
from einscade.ir import print_cascade
from einscade.ir.cascade import Cascade, size_symbol
from einscade.ir.expr import names
from einscade.passes.analysis.blocks import BlockLayout, classify
from einscade.passes.analysis.masks import Mask, attention_mask

_CACHE_SIZE = 32  # layouts kept per kernel
KEY_MODES = ("grid", "box")
_SOURCES: dict[tuple, LayoutSource] = {}
_SOURCES_LOCK = threading.Lock()


@dataclass(frozen=True)
class LayoutArrays:
    """The kernel's layout arguments and the layouts they come from.

    ``arrays``: int32 tensors by kernel name. Row ``g * P1 + p1`` of ``PARTIAL_NUM`` /
    ``PARTIAL_IDX`` (and ``FULL_*``) holds query tile ``p1`` of the ``g``-th combination of
    the layout ranks' values (row-major). ``scalars``: ints by kernel name: the rows per
    unit of each layout rank (``LAYOUT_stride_b``, 0 where the lookups broadcast), the row
    lengths of the index arrays, and in box mode the key grid's strides (``KEY_STRIDE_0``).
    """

    arrays: dict[str, torch.Tensor]
    scalars: dict[str, int]
    layouts: tuple[BlockLayout, ...]

    @property
    def partial_num(self) -> torch.Tensor:
        return self.arrays["PARTIAL_NUM"]

    @property
    def full_num(self) -> torch.Tensor:
        return self.arrays["FULL_NUM"]

    @property
    def visited(self) -> int:
        """Key tiles (chunks in box mode) visited over all rows."""
        return int(self.partial_num.sum()) + int(self.full_num.sum())

    def to(self, device: torch.device) -> LayoutArrays:
        moved = {k: v.to(device) for k, v in self.arrays.items()}
        return LayoutArrays(moved, self.scalars, self.layouts)


@dataclass
class _Lists:
    """Partial and full tile lists per row, and the chunk table of box mode."""

    partial: list[list[int]] = field(default_factory=list)
    full: list[list[int]] = field(default_factory=list)
    chunks: list[tuple[int, int, int, tuple[int, ...]]] = field(default_factory=list)

    def grid_rows(self, layout: BlockLayout, key_size: int) -> None:
        for tiles in layout.key_tiles:
            partial, full = [], []
            for tile in tiles:
                index = layout.key_tile_index(tile)
                inside = (index + 1) * layout.key_tile[0] <= key_size  # type: ignore[index]
                (full if tile.full and inside else partial).append(index)
            self.partial.append(partial)
            self.full.append(full)

    def box_rows(self, layout: BlockLayout, chunk: int) -> None:
        strides = _row_major_strides(layout.key_grid)
        for tiles in layout.key_tiles:
            partial, full = [], []
            for tile in tiles:
                base = sum(o * s for o, s in zip(tile.origin, strides, strict=True))
                for start in range(0, tile.size, chunk):
                    whole = tile.full and start + chunk <= tile.size
                    (full if whole else partial).append(len(self.chunks))
                    self.chunks.append((base, start, tile.size, tile.shape))
            self.partial.append(partial)
            self.full.append(full)


def _row_major_strides(extents: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(extents[k + 1 :]) for k in range(len(extents)))


def _pack(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max([len(r) for r in rows] + [1])
    counts = torch.tensor([len(r) for r in rows], dtype=torch.int32)
    indices = torch.zeros(len(rows), width, dtype=torch.int32)
    for k, row in enumerate(rows):
        indices[k, : len(row)] = torch.tensor(row, dtype=torch.int32)
    return counts, indices


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha1(data.numpy().tobytes()).hexdigest()
    return f"{digest}{tuple(data.shape)}{data.dtype}"


class LayoutSource:
    """Block layouts of one kernel's mask for the arguments of each launch (cached)."""

    def __init__(
        self, mask: Mask, query_tile: tuple[int, ...], key_tile: int, ranks: tuple[str, ...],
        key_mode: str = "grid",
    ):  # fmt: skip
        if key_mode not in KEY_MODES:
            raise KernelError(f"key_mode must be one of {', '.join(KEY_MODES)}, got {key_mode!r}")
        self.mask = mask
        self.query_tile = query_tile
        self.key_tile = key_tile
        self.ranks = ranks
        self.key_mode = key_mode
        used = set() if mask.predicate is None else names(mask.predicate)
        self.params = tuple(p.name for p in mask.cascade.params if p.name in used)
        self.cache: OrderedDict[tuple, LayoutArrays] = OrderedDict()
        self.classified = 0  # layouts computed (not found in the cache)

    @property
    def key_axes(self) -> int:
        """Axes of the key grid (the box mode kernel unflattens chunk points over them)."""
        return len(self.mask.key_axes)

    def arrays(
        self, sizes: dict[str, int], params: dict[str, int | float],
        tensors: dict[str, torch.Tensor], device: torch.device,
    ) -> LayoutArrays:  # fmt: skip
        """The layout arguments for a launch, on ``device``."""
        lookups = {d.name: tensors[d.name] for d in self.mask.lookups}
        bound = {k: params[k] for k in self.params if k in params}
        key = (
            tuple(sorted(sizes.items())), tuple(sorted(bound.items())),
            tuple(sorted((k, _digest(v)) for k, v in lookups.items())), str(device),
        )  # fmt: skip
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        host = {k: v.detach().to("cpu") for k, v in lookups.items()}
        arrays = self.compute(sizes, bound, host).to(device)
        self.cache[key] = arrays
        if len(self.cache) > _CACHE_SIZE:
            self.cache.popitem(last=False)
        return arrays

    def extents(self, sizes: dict[str, int], lookups: dict[str, torch.Tensor]) -> list[int]:
        """How many layouts each layout rank needs: its extent in the lookups (1 where they
        broadcast along it)."""
        found = []
        for rank in self.ranks:
            dims = [
                lookups[d.name].shape[k] for d in self.mask.lookups
                for k, r in enumerate(d.ranks) if r == rank
            ]  # fmt: skip
            found.append(max(dims, default=sizes.get(size_symbol(rank), 1)))
        return found

    def compute(
        self, sizes: dict[str, int], params: dict[str, int | float],
        lookups: dict[str, torch.Tensor],
    ) -> LayoutArrays:  # fmt: skip
        """Classify the tiles of every combination of the layout ranks' values."""
        self.classified += 1
        extents = self.extents(sizes, lookups)
        lists, layouts = _Lists(), []
        for values in itertools.product(*(range(n) for n in extents)):
            at = dict(zip(self.ranks, values, strict=True))
            layout = self.classify(sizes, params, lookups, at)
            if self.key_mode == "grid":
                lists.grid_rows(layout, sizes[size_symbol(self.mask.key)])
            else:
                lists.box_rows(layout, self.key_tile)
            layouts.append(layout)
        tiles = len(layouts[0].key_tiles)
        scalars = {
            f"LAYOUT_stride_{rank}": 0 if n == 1 else tiles * math.prod(extents[k + 1 :])
            for k, (rank, n) in enumerate(zip(self.ranks, extents, strict=True))
        }
        arrays: dict[str, torch.Tensor] = {}
        for kind, rows in (("PARTIAL", lists.partial), ("FULL", lists.full)):
            arrays[f"{kind}_NUM"], arrays[f"{kind}_IDX"] = _pack(rows)
            scalars[f"{kind}_WIDTH"] = arrays[f"{kind}_IDX"].shape[1]
        if self.key_mode == "box":
            arrays |= _chunk_arrays(lists.chunks, self.key_axes)
            strides = _row_major_strides(layouts[0].key_grid)
            scalars |= {f"KEY_STRIDE_{k}": s for k, s in enumerate(strides[:-1])}
        return LayoutArrays(arrays, scalars, tuple(layouts))

    def classify(self, sizes, params, lookups, at) -> BlockLayout:  # type: ignore[no-untyped-def]
        if self.key_mode == "grid":
            return classify(
                self.mask, sizes, params, lookups, self.query_tile, (self.key_tile,), at=at
            )
        # Box mode without padding: chunks of M0 points need no aligned rows.
        return classify(
            self.mask, sizes, params, lookups, self.query_tile, key_mode="box", pad=1, at=at
        )


def _chunk_arrays(chunks: list, axes: int) -> dict[str, torch.Tensor]:  # type: ignore[type-arg]
    """The chunk table of box mode (one dummy chunk if there is none)."""
    chunks = chunks or [(0, 0, 0, (1,) * axes)]
    columns = list(zip(*chunks, strict=True))
    table = {
        name: torch.tensor(column, dtype=torch.int32)
        for name, column in zip(("CHUNK_BASE", "CHUNK_START", "CHUNK_SIZE"), columns, strict=False)
    }
    table["CHUNK_EXTENT"] = torch.tensor(columns[3], dtype=torch.int32).reshape(-1)
    return table


def layout_source(
    original: Cascade, query: str, key: str, batch: tuple[str, ...],
    query_tile: tuple[int, ...], key_tile: int, key_mode: str = "grid",
) -> LayoutSource:  # fmt: skip
    """The layout source of a kernel: the mask of ``original`` (the cascade before fusion
    and tiling) between ``query`` and ``key``, whose other ranks must be ``batch`` ranks of
    the kernel. Raises ``KernelError`` (with the reason) where there is none."""
    try:
        mask = attention_mask(original, query, key)
    except ValueError as error:
        raise KernelError(f"no block layout for @{original.name}: {error}") from error
    stray = [r for r in mask.other_ranks if r not in batch]
    if stray:
        raise KernelError(
            f"the mask of @{original.name} reads rank {stray[0]!r}, not a batch rank of the "
            "kernel: no block layout per program"
        )
    ranks = tuple(r for r in batch if r in mask.other_ranks)
    # One source (and cache) per mask and tiling, however often its kernel is built.
    key = (print_cascade(original), query, key, query_tile, key_tile, ranks, key_mode)
    with _SOURCES_LOCK:
        if key not in _SOURCES:
            _SOURCES[key] = LayoutSource(mask, query_tile, key_tile, ranks, key_mode)
        return _SOURCES[key]
