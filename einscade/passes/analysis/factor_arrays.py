"""Answers for every factor tile of a product mask at once, from summed-area tables.

A factor with a dense truth table (dense_groups.py) over its axes (the same ``d`` axes on the
query and the key side) answers box questions by counting: the number of allowed pairs in a
(query box, key box) is an inclusion-exclusion over ``2 ** (2 d)`` corners of the table's
summed-area table, for any number of boxes in one gather per corner. Zero pairs is FALSE,
all of them TRUE. The keys allowed by some query of a query box are the nonzero entries of
the query-side summed table's ``2 ** d`` corner sum. Both are exact, and they agree with the
per-tile answers of :class:`~einscade.passes.analysis.product.ProductMask` (tested), which
the final classification uses; these arrays only feed the cost of a candidate tiling.
"""

from __future__ import annotations

import itertools

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # queries, keys, full per (tile, key part)


class FactorArrays:
    """Summed-area tables of one factor's dense table (``allowed``: query dims, then key
    dims, ``d`` each), built on first use."""

    def __init__(self, allowed: np.ndarray):
        self.allowed = allowed
        self.d = allowed.ndim // 2
        self.extents = allowed.shape[self.d :]
        self._pairs: np.ndarray | None = None  # summed over all dims
        self._queries: np.ndarray | None = None  # summed over the query dims

    def box_mode(self, qlo: np.ndarray, qhi: np.ndarray, pad: int) -> Arrays | None:
        """Per query box (rows of ``qlo``/``qhi``, inclusive): the key box (the bounding box
        of its allowed keys, the last axis padded to a multiple of ``pad`` when ``pad > 1``)
        as (queries, keys, full) for the boxes that have keys; None when some region is not
        one box (the per-tile path decides those)."""
        found = self._box_all(qlo, qhi, pad)
        if found is None:
            return None
        queries, keys, full, some = found
        return queries[some], keys[some], full[some]

    def box_mode_batch(
        self, qlo: np.ndarray, qhi: np.ndarray, pad: int, sizes: list[int]
    ) -> list[Arrays] | None:
        """:meth:`box_mode` of several tilings in one pass: their query boxes concatenated
        (``sizes`` boxes each), the answers split back per tiling (None: some region of some
        tiling is not one box). Fewer, larger array operations than one call per tiling."""
        found = self._box_all(qlo, qhi, pad)
        if found is None:
            return None
        return _split(found, sizes)

    def grid_mode_batch(self, tilings: list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]):  # type: ignore[no-untyped-def]
        """:meth:`grid_mode` of several (qlo, qhi, key tile) tilings in one pass over the
        concatenated (query box, key tile) pairs, split back per tiling, in the same order."""
        lo: list[list[np.ndarray]] = [[] for _ in range(2 * self.d)]
        hi: list[list[np.ndarray]] = [[] for _ in range(2 * self.d)]
        sizes = []
        for qlo, qhi, tile in tilings:
            klo, khi = self._key_tiles(tile)
            nq, nk = len(qlo), len(klo)
            q_index, k_index = np.repeat(np.arange(nq), nk), np.tile(np.arange(nk), nq)
            for a in range(self.d):  # row-major over [query boxes, key tiles], as grid_mode
                lo[a].append(qlo[q_index, a])
                hi[a].append(qhi[q_index, a])
                lo[self.d + a].append(klo[k_index, a])
                hi[self.d + a].append(khi[k_index, a])
            sizes.append(nq * nk)
        lo_all, hi_all = [np.concatenate(x) for x in lo], [np.concatenate(x) for x in hi]
        counts = self.pair_counts(lo_all, hi_all)
        queries = _volume(lo_all[: self.d], hi_all[: self.d])
        keys = _volume(lo_all[self.d :], hi_all[self.d :])
        return _split((queries, keys, counts == queries * keys, counts > 0), sizes)

    def _key_tiles(self, tile: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        counts = [-(-n // t) for n, t in zip(self.extents, tile, strict=True)]
        klo = np.indices(counts).reshape(self.d, -1).T * np.array(tile)  # row-major starts
        return klo, np.minimum(klo + np.array(tile), np.array(self.extents)) - 1

    def _box_all(self, qlo: np.ndarray, qhi: np.ndarray, pad: int):  # type: ignore[no-untyped-def]
        """:meth:`box_mode`'s arrays over every query box, with ``some`` (it has keys)."""
        q_lo, q_hi = list(qlo.T), list(qhi.T)
        hit = self._query_counts(q_lo, q_hi) > 0
        tiles = len(qlo)
        flat = hit.reshape(tiles, -1)
        some = flat.any(axis=1)
        k_lo, k_hi, keys = [], [], 1
        for axis in range(self.d):
            others = tuple(1 + a for a in range(self.d) if a != axis)
            line = hit.any(axis=others) if others else hit
            k_lo.append(line.argmax(axis=1))
            k_hi.append(line.shape[1] - 1 - line[:, ::-1].argmax(axis=1))
            keys = keys * (k_hi[-1] - k_lo[-1] + 1)
        if np.any(some & (np.count_nonzero(flat, axis=1) != keys)):
            return None
        if pad > 1:
            k_lo[-1], k_hi[-1] = _pad(k_lo[-1], k_hi[-1], self.extents[-1], pad)
            keys = _volume(k_lo, k_hi)
        queries = _volume(q_lo, q_hi)
        counts = self.pair_counts(q_lo + k_lo, q_hi + k_hi)
        return queries, keys, counts == queries * keys, some

    def grid_mode(self, qlo: np.ndarray, qhi: np.ndarray, tile: tuple[int, ...]) -> Arrays:
        """Every (query box, key tile) pair with an allowed pair, key tiles of extents
        ``tile`` over the factor's axes: (queries, keys, full)."""
        klo, khi = self._key_tiles(tile)
        # Pairs as a [query boxes, key tiles] grid by broadcasting.
        q_lo, q_hi = [c[:, None] for c in qlo.T], [c[:, None] for c in qhi.T]
        k_lo, k_hi = [c[None, :] for c in klo.T], [c[None, :] for c in khi.T]
        counts = self.pair_counts(q_lo + k_lo, q_hi + k_hi)
        queries, keys = _volume(q_lo, q_hi), _volume(k_lo, k_hi)
        present = counts > 0
        full = counts == queries * keys
        shape = counts.shape
        return (
            np.broadcast_to(queries, shape)[present],
            np.broadcast_to(keys, shape)[present],
            full[present],
        )

    def _query_counts(self, lo: list[np.ndarray], hi: list[np.ndarray]) -> np.ndarray:
        """[tiles, key extents...]: allowed queries of each box per key."""
        if self._queries is None:
            self._queries = _summed(self.allowed, range(self.d))
        return _corner_sum(self._queries, lo, hi)

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


def _split(found, sizes: list[int]) -> list[Arrays]:  # type: ignore[no-untyped-def]
    """(queries, keys, full) of each segment of ``sizes`` entries, where ``keep``."""
    queries, keys, full, keep = found
    parts, start = [], 0
    for size in sizes:
        part = slice(start, start + size)
        mask = keep[part]
        parts.append((queries[part][mask], keys[part][mask], full[part][mask]))
        start += size
    return parts
