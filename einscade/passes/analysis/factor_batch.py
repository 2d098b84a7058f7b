"""Many tilings of a one-axis factor's table answered together, in a fixed number of array
operations.

The layout search asks a factor of a product mask (product.py) for a few dozen tilings,
each a handful of small array operations in :class:`FactorArrays` (a block sum, then the
kinds of its tiles): at a few microseconds per operation on tables of 64 x 64, the
operations' overhead is the cost, not their work. For a factor over one axis (a window per
axis, a folded group axis) every tile of every requested tiling is laid out in one flat
array instead, its counts read off the table's summed-area table (grid mode) or its
column prefix sums (box mode), and the kinds of all tilings found with one ``bincount``
whose codes lead with the request's index. The results are those of
:meth:`FactorArrays.tiled_grid` and :meth:`FactorArrays.tiled_box`, in the same order
(tested), stored in their caches.
"""

from __future__ import annotations

import numpy as np

from einscade.passes.analysis.factor_arrays import FactorArrays, _pad


def batch_grid(arrays: FactorArrays, requests: list[tuple[int, int]]) -> None:
    """Fill ``arrays``' cache of :meth:`FactorArrays.tiled_grid` for the (query tile, key
    tile) extents of ``requests`` (a one-axis factor)."""
    requests = [r for r in dict.fromkeys(requests) if ((r[0],), (r[1],)) not in arrays.kinds]
    if not requests:
        return
    n = arrays.extents[0]
    q_tiles, k_tiles = _Tiles(n, [q for q, _ in requests]), _Tiles(n, [k for _, k in requests])
    # Every (query tile, key tile) pair of every request, request by request.
    pairs = q_tiles.count * k_tiles.count
    request = np.repeat(np.arange(len(requests)), pairs)
    local = np.arange(int(pairs.sum())) - np.repeat(np.cumsum(pairs) - pairs, pairs)
    q_index, k_index = np.divmod(local, k_tiles.count[request])
    q_index += q_tiles.first[request]
    k_index += k_tiles.first[request]
    q_lo, q_hi = q_tiles.lo[q_index], q_tiles.hi[q_index]
    k_lo, k_hi = k_tiles.lo[k_index], k_tiles.hi[k_index]
    summed, width = arrays.summed_flat(), n + 1
    counts = summed[q_hi * width + k_hi] - summed[q_lo * width + k_hi]
    counts -= summed[q_hi * width + k_lo] - summed[q_lo * width + k_lo]
    full = counts == (q_hi - q_lo) * (k_hi - k_lo)
    codes = request * 8 + q_tiles.clipped[q_index] * 4 + k_tiles.clipped[k_index] * 2 + full
    found = np.bincount(codes[counts > 0], minlength=8 * len(requests))
    seen = np.flatnonzero(found)
    which, code = np.divmod(seen, 8)
    q_size = np.where(code // 4 == 1, q_tiles.tail[which], q_tiles.size[which])
    k_size = np.where(code // 2 % 2 == 1, k_tiles.tail[which], k_tiles.size[which])
    columns = (q_size, k_size, code % 2 == 1, found[seen])
    for (q, k), kinds in zip(requests, _split(which, len(requests), columns), strict=True):
        arrays.kinds[((q,), (k,))] = kinds


def batch_box(arrays: FactorArrays, requests: list[tuple[int, int]]) -> None:
    """Fill ``arrays``' caches of :meth:`FactorArrays.tiled_box` and
    :meth:`FactorArrays.tile_boxes` for the (query tile, pad) of ``requests`` (a one-axis
    factor)."""
    requests = [r for r in dict.fromkeys(requests) if ((r[0],), r[1]) not in arrays.kinds]
    if not requests:
        return
    n = arrays.extents[0]
    tiles = _Tiles(n, [q for q, _ in requests])
    request = np.repeat(np.arange(len(requests)), tiles.count)
    q_lo, q_hi = tiles.lo, tiles.hi
    columns = arrays.column_prefix()  # [n + 1, n]: allowed pairs of each key, rows before
    per_key = columns[q_hi] - columns[q_lo]
    hit = per_key > 0
    some = hit.any(axis=1)
    k_lo = hit.argmax(axis=1)
    k_hi = n - 1 - hit[:, ::-1].argmax(axis=1)
    union = some & (np.count_nonzero(hit, axis=1) != k_hi - k_lo + 1)
    pads = np.array([p for _, p in requests])[request]
    k_lo, k_hi = _pad(k_lo, k_hi, n, pads)  # pad 1 leaves a box as it is
    keys = k_hi - k_lo + 1
    full = per_key.sum(axis=1) == (q_hi - q_lo) * keys
    span = n + 1  # key boxes hold at most every key
    codes = ((request * 2 + tiles.clipped) * span + keys) * 2 + full
    found = np.bincount(codes[some], minlength=4 * span * len(requests))
    seen = np.flatnonzero(found)
    pair, is_full = np.divmod(seen, 2)
    which, rest = np.divmod(pair, 2 * span)
    clipped, key_size = np.divmod(rest, span)
    q_size = np.where(clipped == 1, tiles.tail[which], tiles.size[which])
    kinds = _split(which, len(requests), (q_size, key_size, is_full == 1, found[seen]))
    broken = np.bincount(request[union], minlength=len(requests)).tolist()
    bounds = np.cumsum(tiles.count).tolist()
    for r, ((q, pad), answer) in enumerate(zip(requests, kinds, strict=True)):
        if broken[r]:
            arrays.kinds[((q,), pad)] = arrays.boxes[((q,), pad)] = None
            continue
        part = slice(bounds[r] - int(tiles.count[r]), bounds[r])
        arrays.kinds[((q,), pad)] = answer
        lo = k_lo[part][None, :]
        arrays.boxes[((q,), pad)] = some[part], lo, keys[part][None, :], full[part]


class _Tiles:
    """The tiles of several tilings of one axis, tiling by tiling: per tiling its tile
    count, first tile, tile extent and clipped tail; per tile its bounds [lo, hi) and
    whether it is the clipped tail (built in Python: a few dozen tiles)."""

    def __init__(self, extent: int, sizes: list[int]):
        counts = [-(-extent // t) for t in sizes]
        tails = [extent - (c - 1) * t for c, t in zip(counts, sizes, strict=True)]
        lo = [o for t in sizes for o in range(0, extent, t)]
        hi = [min(o + t, extent) for t in sizes for o in range(0, extent, t)]
        sizes_of = [t for t, c in zip(sizes, counts, strict=True) for _ in range(c)]
        self.count = np.array(counts)
        self.first = np.array([sum(counts[:r]) for r in range(len(counts))])
        self.size, self.tail = np.array(sizes), np.array(tails)
        self.lo, self.hi = np.array(lo), np.array(hi)
        clipped = [b - a != t for a, b, t in zip(lo, hi, sizes_of, strict=True)]
        self.clipped = np.array(clipped, np.int64)


def _split(which: np.ndarray, requests: int, columns: tuple[np.ndarray, ...]):  # type: ignore[no-untyped-def]
    """The kinds of each request: the columns cut where the request index changes."""
    bounds = [0, *np.searchsorted(which, np.arange(1, requests)).tolist(), len(which)]
    return [tuple(c[a:b] for c in columns) for a, b in zip(bounds, bounds[1:], strict=False)]
