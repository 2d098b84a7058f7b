"""Grid key mode: the fixed key tiles of one query tile, each empty, partial or full.

The key region of a query tile names blocks of candidate tiles directly; tiles outside its
fail region (keys some query may refuse) are full without evaluation, and a run of the others
is judged whole first (TRUE or FALSE holds for all its tiles) and halved otherwise. The cost
grows with the visited tiles, never with the number of key tiles.
"""

from __future__ import annotations

import itertools
import math

from einscade.passes.analysis.block_layout import KeyTile
from einscade.passes.analysis.interval_core import FALSE, TRUE, UNKNOWN, Box
from einscade.passes.analysis.tilings import Tiling


def unevaluated(qboxes: list[Box], kboxes: list[Box]) -> int:
    """The judgement of a tile left unevaluated: partial (always sound)."""
    return UNKNOWN


def grid_row(judge, keys: Tiling, qboxes: list[Box], region, refused, cache: dict):  # type: ignore[no-untyped-def]
    """Key tiles of one query tile in grid mode, in increasing order. ``region``: keys some
    query may allow; ``refused``: keys some query may refuse. ``cache`` shares the KeyTile
    objects of one tiling between rows (they are immutable)."""
    fail = [b for box in refused for b in keys.blocks(box)]
    if len(keys.tile) == 1:
        return _row_1d(judge, keys, qboxes, region, fail, cache)
    found: dict[tuple[int, ...], bool] = {}
    for box in region:
        for block in keys.blocks(box):
            for coords in itertools.product(*(range(a, b + 1) for a, b in block)):
                if coords not in found:
                    _one_tile(judge, keys, qboxes, coords, fail, found)
    return tuple(key_tile(keys, coords, found[coords], cache) for coords in sorted(found))


def _row_1d(judge, keys, qboxes, region, fail, cache) -> tuple[KeyTile, ...]:  # type: ignore[no-untyped-def]
    """1-D key tiles: the tile ranges of the region minus those meeting the fail region are
    full (sliced from one shared tuple); each run of the others is classified as a block
    (judged whole, then halved)."""
    plus = union_ranges([b[0] for box in region for b in keys.blocks(box)])
    minus = union_ranges([b[0] for b in fail])
    parts: list[tuple[KeyTile, ...]] = []
    for lo, hi in plus:
        start = lo
        for a, b in minus:
            if b < start or a > hi:
                continue
            if a > start:
                parts.append(_full_run(keys, start, a - 1, cache))
            run = (max(a, start), min(b, hi))
            found: dict[tuple[int, ...], bool] = {}
            _classify_block(judge, keys, qboxes, (run,), found)
            parts.append(tuple(key_tile(keys, c, found[c], cache) for c in sorted(found)))
            start = run[1] + 1
        if start <= hi:
            parts.append(_full_run(keys, start, hi, cache))
    return parts[0] if len(parts) == 1 else tuple(itertools.chain.from_iterable(parts))


_SHARED_RUN = 1 << 16  # 1-D key tilings up to this many tiles keep one tuple of full tiles


def _full_run(keys: Tiling, lo: int, hi: int, cache: dict) -> tuple[KeyTile, ...]:  # type: ignore[type-arg]
    if keys.count > _SHARED_RUN:
        return tuple(key_tile(keys, (j,), True, cache) for j in range(lo, hi + 1))
    every = cache.get("full")
    if every is None:
        every = cache["full"] = tuple(key_tile(keys, (j,), True, cache) for j in range(keys.count))
    return every[lo : hi + 1]


def union_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint ranges covering the given ones (touching ranges joined)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _one_tile(judge, keys, qboxes, coords, fail, found) -> None:  # type: ignore[no-untyped-def]
    """A tile outside the fail region is full (no query refuses any of its keys; it is not
    empty: an empty tile lies in the fail region); others are evaluated."""
    if not any(all(a <= c <= b for c, (a, b) in zip(coords, blk, strict=True)) for blk in fail):
        found[coords] = True
        return
    origin = tile_origin(coords, keys)
    truth = judge(qboxes, keys.boxes(origin, keys.shape(origin)))
    if truth != FALSE:
        found[coords] = truth == TRUE


def key_tile(keys: Tiling, coords: tuple[int, ...], full: bool, cache: dict) -> KeyTile:  # type: ignore[type-arg]
    tile = cache.get((coords, full))
    if tile is None:
        origin = tile_origin(coords, keys)
        tile = cache[(coords, full)] = KeyTile(origin, keys.shape(origin), full)
    return tile


_SMALL_BLOCK = 4  # tiles; smaller blocks are classified tile by tile


def _classify_block(judge, keys, qboxes, block, found) -> None:  # type: ignore[no-untyped-def]
    """Tiles of a block of tile coordinates into ``found`` (coordinates -> full). A block of
    more than a few tiles is first judged whole: TRUE or FALSE there holds for each of its
    tiles, so runs of full or empty tiles cost one evaluation; else it is halved."""
    count = math.prod(b - a + 1 for a, b in block)
    if judge is unevaluated:  # unevaluated: every tile of the block is partial
        tiles = itertools.product(*(range(a, b + 1) for a, b in block))
        found.update((coords, False) for coords in tiles if coords not in found)
        return
    if count > _SMALL_BLOCK:
        truth = judge(qboxes, keys.block_boxes(block))
        if truth == TRUE:
            found.update(
                dict.fromkeys(itertools.product(*(range(a, b + 1) for a, b in block)), True)
            )
        if truth != UNKNOWN:
            return
        axis = max(range(len(block)), key=lambda d: block[d][1] - block[d][0])
        a, b = block[axis]
        for half in ((a, (a + b) // 2), ((a + b) // 2 + 1, b)):
            part = block[:axis] + (half,) + block[axis + 1 :]
            _classify_block(judge, keys, qboxes, part, found)
        return
    for coords in itertools.product(*(range(a, b + 1) for a, b in block)):
        if coords not in found:
            origin = tile_origin(coords, keys)
            truth = judge(qboxes, keys.boxes(origin, keys.shape(origin)))
            if truth != FALSE:
                found[coords] = truth == TRUE


def tile_origin(coords: tuple[int, ...], keys: Tiling) -> tuple[int, ...]:
    return tuple(c * t for c, t in zip(coords, keys.tile, strict=True))
