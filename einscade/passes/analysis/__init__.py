"""Analyses: pure functions from a cascade to facts about it (they never rewrite it)."""

from einscade.passes.analysis.pass_count import LiveTensor, PassReport, pass_count, rank_family

__all__ = ["LiveTensor", "PassReport", "pass_count", "rank_family"]
