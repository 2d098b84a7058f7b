"""Analyses: pure functions from a cascade to facts about it (they never rewrite it)."""

from einscade.passes.analysis.blocks import (
    BlockLayout,
    BlockMaskArrays,
    KeyTile,
    classify,
    count_allowed,
)
from einscade.passes.analysis.intervals import FALSE, TRUE, UNKNOWN, BoxEvaluator, Interval
from einscade.passes.analysis.masks import Axes, BoundMask, LookupTable, Mask, attention_mask
from einscade.passes.analysis.pass_count import LiveTensor, PassReport, pass_count, rank_family

__all__ = [
    "FALSE",
    "TRUE",
    "UNKNOWN",
    "Axes",
    "BlockLayout",
    "BlockMaskArrays",
    "BoundMask",
    "BoxEvaluator",
    "Interval",
    "KeyTile",
    "LiveTensor",
    "LookupTable",
    "Mask",
    "PassReport",
    "attention_mask",
    "classify",
    "count_allowed",
    "pass_count",
    "rank_family",
]
