"""Analyses: pure functions from a cascade to facts about it (they never rewrite it)."""

from einscade.passes.analysis.blocks import (
    BlockLayout,
    BlockMaskArrays,
    Classifier,
    KeyTile,
    classify,
    count_allowed,
)
from einscade.passes.analysis.cost import Hardware, Heads, LayoutCost, layout_cost
from einscade.passes.analysis.intervals import FALSE, TRUE, UNKNOWN, BoxEvaluator, Interval
from einscade.passes.analysis.layout import Candidate, LayoutChoice, LayoutSpec, choose_layout
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
    "Candidate",
    "Classifier",
    "Hardware",
    "Heads",
    "Interval",
    "KeyTile",
    "LayoutChoice",
    "LayoutCost",
    "LayoutSpec",
    "LiveTensor",
    "LookupTable",
    "Mask",
    "PassReport",
    "attention_mask",
    "choose_layout",
    "classify",
    "count_allowed",
    "layout_cost",
    "pass_count",
    "rank_family",
]
