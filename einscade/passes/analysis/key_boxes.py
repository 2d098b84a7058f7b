"""Box key mode: one key box per query tile (or a few, for a union), padded and judged.

The key box is the bounding box of the query tile's key region with the innermost extent
padded up to a multiple of ``pad`` (kept inside the grid). Boxes of a union (an ``or``, e.g.
attention sinks ``m < sinks``) stay separate small tiles as long as merging them would cost
more keys. With ``split`` (1-D keys) a partial box is cut into a partial head, a full core
and a partial tail.
"""

from __future__ import annotations

import itertools
import math

from einscade.passes.analysis.block_layout import KeyTile
from einscade.passes.analysis.grid_rows import union_ranges
from einscade.passes.analysis.interval_core import (
    FALSE,
    TRUE,
    UNKNOWN,
    Box,
    Interval,
    hull,
    intersect_box,
    meets,
)
from einscade.passes.analysis.masks import Axes


def box_row(judge, key: Axes, qboxes: list[Box], region, fail, pad: int, split: int):  # type: ignore[no-untyped-def]
    """Key boxes of one query tile in box mode, and how many candidates were empty."""
    boxes = _cluster([pad_box(b, key.extents, pad) for b in region], key, pad)
    tiles: list[KeyTile] = []
    for box in boxes:
        refused = any(meets(box, f) for f in fail)
        truth = judge(qboxes, [box]) if refused else TRUE
        if truth == FALSE:
            continue
        origin = tuple(i.lo for i in box)
        shape = tuple(i.hi - i.lo + 1 for i in box)
        if truth == UNKNOWN and split and len(box) == 1:
            parts = [part[0] for f in fail if (part := intersect_box(box, f)) is not None]
            tiles += split_box(box[0], parts, split)
        else:
            tiles.append(KeyTile(origin, shape, truth == TRUE))
    return tuple(sorted(tiles, key=lambda t: t.origin)), len(boxes) - len(tiles)


def split_box(box: Interval, refused: list[Interval], grain: int) -> list[KeyTile]:
    """A partial 1-D key box as [partial head, full core, partial tail] around the longest
    run of keys that no query refuses, cut at multiples of ``grain`` from the box start."""
    free, start = [], box.lo
    for lo, hi in union_ranges([(int(i.lo), int(i.hi)) for i in refused]):
        if lo > start:
            free.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= box.hi:
        free.append((start, box.hi))
    whole = [KeyTile((box.lo,), (box.hi - box.lo + 1,), False)]
    if not free:
        return whole
    lo, hi = max(free, key=lambda run: run[1] - run[0])
    core_lo = box.lo + -(-(lo - box.lo) // grain) * grain
    core_hi = core_lo + (hi - core_lo + 1) // grain * grain - 1
    if core_hi - core_lo + 1 < 2 * grain:
        return whole
    parts = [KeyTile((core_lo,), (core_hi - core_lo + 1,), True)]
    if core_lo > box.lo:
        parts.insert(0, KeyTile((box.lo,), (core_lo - box.lo,), False))
    if core_hi < box.hi:
        parts.append(KeyTile((core_hi + 1,), (box.hi - core_hi,), False))
    return parts


def pad_box(box: Box, extents: tuple[int, ...], pad: int) -> Box:
    """Innermost extent up to a multiple of ``pad``, shifted back inside the grid."""
    last, length = box[-1], extents[-1]
    padded = min(-(-(last.hi - last.lo + 1) // pad) * pad, length)
    lo = max(0, min(last.lo, length - padded))
    return box[:-1] + (Interval(lo, lo + padded - 1),)


def _volume(box: Box) -> int:
    return math.prod(i.hi - i.lo + 1 for i in box)


def _cluster(boxes: list[Box], key: Axes, pad: int) -> list[Box]:
    """Merge padded boxes that overlap or whose padded hull costs no more keys than both."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for a, b in itertools.combinations(range(len(boxes)), 2):
            joined = pad_box(hull(boxes[a], boxes[b]), key.extents, pad)
            cheaper = _volume(joined) <= _volume(boxes[a]) + _volume(boxes[b])
            if cheaper or intersect_box(boxes[a], boxes[b]) is not None:
                boxes = [x for k, x in enumerate(boxes) if k not in (a, b)] + [joined]
                merged = True
                break
    return boxes
