"""Answers for every factor tile of a product mask at once, by counting allowed pairs.

A factor with a dense truth table (dense_groups.py) over its axes (the same ``d`` axes on the
query and the key side) answers box questions by counting: zero allowed pairs in a (query
box, key box) is FALSE, all of them TRUE, and the keys allowed by some query of a query box
are those whose count over the box is nonzero. For a whole tiling of the factor's axes
(query tiles of fixed extents, tails clipped) the counts are block sums: the table cut into
its blocks by one reshape and each block summed
(:meth:`FactorArrays.tiled_grid`, :meth:`FactorArrays.tiled_box`): one array operation per
tiling, where corner gathers would cost ``2 ** (2 d)`` indexed reads per (query box, key
tile) pair, and the layout search asks for a few dozen tilings per mask. Arbitrary boxes
(the prefix boxes of row-major token ranges, product.py) are counted from summed-area
tables by inclusion and exclusion of their corners (:meth:`FactorArrays.pair_counts`,
:meth:`FactorArrays.query_profile`).

All of it is exact and agrees with the per-tile answers of
:class:`~einscade.passes.analysis.product.ProductMask` (tested), which the final
classification uses; these arrays feed the cost of candidate tilings.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from einscade.passes.analysis.factor_bits import TableBits

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # queries, keys, full per (tile, key part)
# Visited tiles by kind: query size, key size, full, and how many tiles of that kind.
Kinds = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
# Per query tile: has keys, key box lo and length per dim ([d, tiles]), the box is full.
Boxes = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class FactorArrays:
    """Counts over one factor's dense table (``allowed``: query dims, then key dims, ``d``
    each); its summed-area table is built on first use."""

    def __init__(self, allowed: np.ndarray):
        self.allowed = allowed
        self.d = allowed.ndim // 2
        self.extents = allowed.shape[self.d :]
        self._pairs: np.ndarray | None = None  # summed over all dims
        self._counts: np.ndarray | None = None  # the table as integers
        self._tilings: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # Answers by tiling: kinds of (tile, key tile) and (tile, pad), key boxes of the
        # latter.
        self.kinds: dict[tuple, Kinds | None] = {}  # type: ignore[type-arg]
        self.boxes: dict[tuple, Boxes | None] = {}  # type: ignore[type-arg]
        # The same answers as Python rows (query size, key size, full, count) and per-tile key
        # boxes (has keys, lo, length, full), filled by factor_bits.py; arrays made on demand.
        self.rows: dict[tuple, list[tuple[int, int, bool, int]] | None] = {}  # type: ignore[type-arg]
        self.box_lists: dict[tuple, list[tuple[bool, int, int, bool]] | None] = {}  # type: ignore[type-arg]

    @functools.cached_property
    def bits(self) -> TableBits:
        """The one-axis table as Python ints (factor_bits.py)."""
        return TableBits(self.allowed)

    def tiled_grid(self, tile: tuple[int, ...], key_tile: tuple[int, ...]) -> Kinds:
        """The (query tile, key tile) pairs with an allowed pair, query tiles of extents
        ``tile`` and key tiles of ``key_tile`` over the factor's axes (tails clipped), as
        kinds (query size, key size, full, count). A tile's size follows from which of its
        axes are clipped (its class), so the kinds are counted per (class, class, full)."""
        found = self.kinds.get((tile, key_tile))
        if found is None:
            rows = self.rows.get((tile, key_tile))
            found = self._tiled_grid(tile, key_tile) if rows is None else _kinds(rows)
            self.kinds[(tile, key_tile)] = found
        return found

    def _tiled_grid(self, tile: tuple[int, ...], key_tile: tuple[int, ...]) -> Kinds:
        if max(tile + key_tile) == 1:  # single points: every allowed pair is a full tile
            allowed = int(np.count_nonzero(self.allowed))
            found = [allowed] if allowed else []
            ones = np.ones(len(found), np.int64)
            return ones, ones.copy(), ones == 1, np.array(found, np.int64)
        counts = self._block_sums(tile + key_tile)
        q_volumes, q_classes, q_sizes = self._tiling(tile)
        k_volumes, k_classes, k_sizes = self._tiling(key_tile)
        full = counts == np.multiply.outer(q_volumes, k_volumes)
        classes = len(k_sizes)
        codes = np.add.outer(q_classes * (2 * classes), k_classes * 2) + full
        found = np.bincount(codes[counts > 0], minlength=2 * classes * len(q_sizes))
        seen = np.flatnonzero(found)
        pair, is_full = np.divmod(seen, 2)
        return q_sizes[pair // classes], k_sizes[pair % classes], is_full == 1, found[seen]

    def tiled_box(self, tile: tuple[int, ...], pad: int) -> Kinds | None:
        """Per query tile of extents ``tile`` (row-major, tails clipped) that has keys: its
        key box (the bounding box of its allowed keys, the last axis padded to a multiple of
        ``pad`` when ``pad > 1``), as kinds (query size, key size, full, count); None when
        some tile's keys are not one box (the per-tile path decides those). The key box
        holds every allowed key of its tile, so its allowed pairs are the tile's total."""
        key = (tile, pad)
        if key not in self.kinds:
            if key in self.rows:
                rows, tiles = self.rows[key], self.box_lists[key]
                self.kinds[key] = None if rows is None else _kinds(rows)
                self.boxes[key] = None if tiles is None else _boxes(tiles)
            else:
                self.kinds[key] = self._tiled_box(tile, pad)
        return self.kinds[key]

    def _tiled_box(self, tile: tuple[int, ...], pad: int) -> Kinds | None:
        d = self.d
        per_key = self._block_sums(tile + (1,) * d)
        volumes, classes, sizes = self._tiling(tile)
        tiles = volumes.size
        flat = per_key.reshape(tiles, -1)
        hit = flat > 0
        some = hit.any(axis=1)
        if d == 1:
            lines = [hit]
        else:
            shaped = hit.reshape((tiles,) + self.extents)
            lines = [shaped.any(axis=tuple(1 + a for a in range(d) if a != k)) for k in range(d)]
        k_lo, k_hi, keys = [], [], 1
        for line in lines:
            k_lo.append(line.argmax(axis=1))
            k_hi.append(line.shape[1] - 1 - line[:, ::-1].argmax(axis=1))
            keys = keys * (k_hi[-1] - k_lo[-1] + 1)
        if np.any(some & (np.count_nonzero(hit, axis=1) != keys)):
            self.boxes[(tile, pad)] = None
            return None
        if pad > 1:
            k_lo[-1], k_hi[-1] = _pad(k_lo[-1], k_hi[-1], self.extents[-1], pad)
            keys = _volume(k_lo, k_hi)
        full = flat.sum(axis=1) == volumes.reshape(-1) * keys
        self.boxes[(tile, pad)] = some, np.stack(k_lo), np.stack(k_hi) - np.stack(k_lo) + 1, full
        span = math.prod(self.extents) + 1  # key boxes hold at most every key
        codes = (classes.reshape(-1) * span + keys) * 2 + full
        found = np.bincount(codes[some], minlength=2 * span * len(sizes))
        seen = np.flatnonzero(found)
        pair, is_full = np.divmod(seen, 2)
        return sizes[pair // span], pair % span, is_full == 1, found[seen]

    def tile_boxes(self, tile: tuple[int, ...], pad: int) -> Boxes | None:
        """Per query tile of :meth:`tiled_box` (row-major): whether it has keys, its key box
        (lo and length per dim, ``[d, tiles]``) and whether the box is full; None when some
        tile's keys are not one box."""
        if (tile, pad) not in self.boxes:
            self.tiled_box(tile, pad)
        return self.boxes[(tile, pad)]

    def _block_sums(self, tiles: tuple[int, ...]) -> np.ndarray:
        """Sums of the table over its blocks of extents ``tiles`` (one per dim, tails
        clipped), one ``reduceat`` per dim cut into blocks: [blocks per dim...]."""
        table = self._counts
        if table is None:
            table = self._counts = self.allowed.astype(np.int64)
        for dim, t in enumerate(tiles):
            if t > 1:
                table = np.add.reduceat(table, np.arange(0, table.shape[dim], t), axis=dim)
        return table

    def _tiling(self, tile: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per tile of extents ``tile`` over the factor's axes (row-major, tails clipped):
        its size and its class (a bit per clipped axis), and the size of each class."""
        found = self._tilings.get(tile)
        if found is None:
            volumes, classes = np.ones((), np.int64), np.zeros((), np.int64)
            sizes = [1]
            for n, t in zip(self.extents, tile, strict=True):
                lengths = np.minimum(t, n - np.arange(0, n, t))
                volumes = np.multiply.outer(volumes, lengths)
                classes = np.add.outer(classes * 2, (lengths != t).astype(np.int64))
                tail = n - (len(lengths) - 1) * t
                sizes = [size * length for size in sizes for length in (t, tail)]
            found = self._tilings[tile] = (volumes, classes, np.array(sizes, np.int64))
        return found

    def pair_counts(self, lo: list[np.ndarray], hi: list[np.ndarray]) -> np.ndarray:
        """Allowed pairs of (query box, key box): bounds per dim, query dims first."""
        if self._pairs is None:
            self._pairs = _summed(self.allowed, range(2 * self.d))
        return _corner_sum(self._pairs, lo, hi)

    def query_profile(self, lo: list, hi: list[np.ndarray]) -> np.ndarray:  # type: ignore[type-arg]
        """[key summed dims..., boxes]: the pair table summed over each query box (1-D bound
        arrays per query dim; a lower bound None is 0). A corner sum of it over key boxes
        gives :meth:`pair_counts` of every (query box, key box) pair, with row gathers in
        place of one gather per pair and corner."""
        if self._pairs is None:
            self._pairs = _summed(self.allowed, range(2 * self.d))
        return np.ascontiguousarray(np.moveaxis(_corner_sum(self._pairs, lo, hi), 0, -1))


def _kinds(rows: list[tuple[int, int, bool, int]]) -> Kinds:
    """Python rows (query size, key size, full, count) as :data:`Kinds` arrays."""
    columns = tuple(zip(*rows, strict=True)) if rows else ((),) * 4
    types = (np.int64, np.int64, bool, np.int64)
    return tuple(np.array(c, t) for c, t in zip(columns, types, strict=True))  # type: ignore[return-value]


def _boxes(tiles: list[tuple[bool, int, int, bool]]) -> Boxes:
    """Per-tile key boxes (has keys, lo, length, full) as :data:`Boxes` arrays."""
    some, lo, length, full = zip(*tiles, strict=True)
    return (np.array(some, bool), np.array(lo, np.int64)[None, :],
            np.array(length, np.int64)[None, :], np.array(full, bool))  # fmt: skip


def profile_counts(profile: np.ndarray, lo: list, hi: list[np.ndarray]) -> np.ndarray:  # type: ignore[type-arg]
    """[query boxes, key boxes]: allowed pairs from a :meth:`FactorArrays.query_profile` and
    the key boxes' bounds (1-D arrays per key dim; a lower bound None is 0)."""
    return _corner_sum(profile, lo, hi).T


def _volume(lo: list[np.ndarray], hi: list[np.ndarray]) -> np.ndarray:
    found = hi[0] - lo[0] + 1
    for a, b in zip(lo[1:], hi[1:], strict=True):
        found = found * (b - a + 1)
    return found


def _summed(table: np.ndarray, dims: range) -> np.ndarray:
    """Inclusive prefix sums over ``dims``, with a zero plane in front of each."""
    found = table.astype(np.int64)
    for dim in dims:
        found = np.cumsum(found, axis=dim)
    shape = [n + 1 if dim in dims else n for dim, n in enumerate(table.shape)]
    summed = np.zeros(shape, np.int64)
    summed[tuple(slice(1, None) if dim in dims else slice(None) for dim in range(table.ndim))] = (
        found
    )
    return summed


def _corner_sum(summed: np.ndarray, lo: list, hi: list[np.ndarray]) -> np.ndarray:  # type: ignore[type-arg]
    """Sums over the boxes [lo, hi] (per leading dim of ``summed``, broadcastable index
    arrays; a lower bound None is 0, whose corner terms vanish) by inclusion and exclusion
    of their corners; trailing dims are kept."""
    ends = [h + 1 for h in hi]
    starts = [a for a in range(len(lo)) if lo[a] is not None]
    total = None
    for corner in itertools.product((0, 1), repeat=len(starts)):
        index = list(ends)
        for a, low in zip(starts, corner, strict=True):
            if low:
                index[a] = lo[a]
        term = summed[tuple(index)]
        if total is None:
            total = -term if sum(corner) % 2 else term
        else:
            total = total - term if sum(corner) % 2 else total + term
    return total  # type: ignore[return-value]


def _pad(lo: np.ndarray, hi: np.ndarray, length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """``key_boxes.pad_box`` on arrays: extent up to a multiple of ``pad``, inside the axis."""
    padded = np.minimum(-(-(hi - lo + 1) // pad) * pad, length)
    start = np.maximum(0, np.minimum(lo, length - padded))
    return start, start + padded - 1
