"""Sequence families of a constant mask: a diagonal band (causal in both alignments, sliding
and causal windows) optionally OR the first keys (sinks, prefix-LM), and packed documents.

The band's edges are read off a sample of rows; the candidate is then verified against the
whole matrix (:func:`~.common.matches`).
"""

from __future__ import annotations

import torch

from einscade.frontends.mask_structure.common import (
    MaskStructure,
    Rows,
    first_true,
    last_true,
    matches,
    spread,
    structure,
)

# Rows read to fit a band's edges; a wrong fit is only a missed family (the check is exact).
_FIT_ROWS = 64


def recognise_band(attend: torch.Tensor) -> MaskStructure | None:
    """Band ``lo <= m - p <= hi`` (top-left coordinates), optionally OR the first S keys.

    The edges are read off a sample of rows, so a mask that is no band costs one sampled
    check; the full check comes last. Leading all-True columns are first taken as the
    band's own keys, then as sinks.
    """
    rows, cols = attend.shape
    sample = spread(rows, _FIT_ROWS)
    full_columns = _leading_full_columns(attend, attend[sample])
    for skip in dict.fromkeys((0, full_columns)):
        bounds = _fit_band(attend, sample, skip)
        if bounds is None:
            continue
        lo, hi = bounds
        sinks = _needed_sinks(rows, lo, hi, skip)
        if matches(attend, _band_rows(cols, lo, hi, sinks)):
            return _band_structure(rows, cols, lo, hi, sinks)
    return None


def _leading_full_columns(attend: torch.Tensor, part: torch.Tensor) -> int:
    """How many leading columns are all True (sinks, or a band's always-visible keys)."""
    holes = (~part).any(0)
    bound = int(holes.to(torch.uint8).argmax()) if bool(holes.any()) else part.shape[1]
    return int(attend[:, :bound].all(0).to(torch.uint8).cumprod(0).sum())


def _fit_band(
    attend: torch.Tensor, sample: torch.Tensor, skip: int
) -> tuple[int | None, int | None] | None:
    """Band edges read off the sampled rows, columns before ``skip`` taken as sinks."""
    rows, cols = attend.shape
    reach = attend[sample, skip:].any(1).nonzero().flatten()
    if len(reach) == 0:
        # Every query sees the same first keys (and maybe nothing past them): a causal
        # mask whose sinks cover every query's past, if there are no more queries than keys.
        return (None, 0) if skip else None
    # Rows seeing nothing past the sinks sit at the top and bottom; where they end bounds
    # the band when no other row does (more queries than keys, a window leaving the keys).
    top = _reaching_edge(attend, sample, skip, int(reach[0]), -1)
    bottom = _reaching_edge(attend, sample, skip, int(reach[-1]), 1)
    query = torch.cat([sample, torch.tensor([top, bottom])]).unique()
    rest = attend[query, skip:]
    nonempty = rest.any(1)
    first, last = skip + first_true(rest), skip + last_true(rest)
    # A row clipped by the matrix edge (or reaching into the sinks) says nothing of the band.
    # Reading only unclipped rows also gives the canonical form: an edge that clips no row
    # (beyond every diagonal of the matrix) comes out as None.
    hi_rows, lo_rows = nonempty & (last < cols - 1), nonempty & (first > skip)
    hi = int((last - query)[hi_rows][0]) if bool(hi_rows.any()) else None
    lo = int((first - query)[lo_rows][-1]) if bool(lo_rows.any()) else None
    if hi is None and top > 0:
        hi = skip - top  # the row above `top` sees nothing: its band ends before `skip`
    if lo is None and bottom < rows - 1:
        lo = cols - 1 - bottom  # the row below `bottom` sees nothing: its band starts past M
    return lo, hi


def _reaching_edge(
    attend: torch.Tensor, sample: torch.Tensor, skip: int, at: int, step: int
) -> int:
    """From sampled row ``sample[at]`` (it sees a key past ``skip``), the farthest row
    toward ``sample[at + step]`` that still does, searched in the unsampled gap only."""
    if not 0 <= at + step < len(sample):
        return int(sample[at])
    near, far = int(sample[at]), int(sample[at + step])
    lo, hi = (far + 1, near) if step < 0 else (near + 1, far)
    gap = attend[lo:hi, skip:].any(1)
    if step < 0:
        gap = gap.flip(0)  # rows nearest `near` first
    blind = ~gap
    inside = int(blind.to(torch.uint8).argmax()) if bool(blind.any()) else len(gap)
    return near + step * inside


def _band_rows(cols: int, lo: int | None, hi: int | None, sinks: int) -> Rows:
    def rows(query: torch.Tensor) -> torch.Tensor:
        p, m = query[:, None], torch.arange(cols)[None, :]
        if lo is None and hi is None:
            out = torch.ones(len(query), cols, dtype=torch.bool)
        elif lo is None or hi is None:
            out = m >= p + lo if hi is None else m <= p + hi
        else:
            out = (m >= p + lo) & (m <= p + hi)
        return out | (m < sinks) if sinks else out

    return rows


def _needed_sinks(rows: int, lo: int | None, hi: int | None, full_columns: int) -> int:
    """Fewest sinks S with band | (m < S) all True on the leading full columns."""
    if full_columns == 0:
        return 0
    covered = _band_rows(full_columns, lo, hi, 0)(torch.arange(rows)).all(0)
    covered_tail = int(covered.flip(0).to(torch.uint8).cumprod(0).sum())
    return full_columns - covered_tail


def _band_structure(
    rows: int, cols: int, lo: int | None, hi: int | None, sinks: int
) -> MaskStructure | None:
    """Name a verified band: causal in either alignment, a window, sinks or a prefix."""
    shift = cols - rows  # the bottom-right diagonal is m - p == shift
    if rows == 1 and hi is None:
        hi = shift  # one query (decoding): its diagonal is the last key, no right edge
    if hi is not None and hi in (0, shift):
        align = "top_left" if hi == 0 else "bottom_right"
        if lo is None:
            if sinks == 0:
                return structure("causal", {"causal": align}, {"causal": align})
            kwargs = {"causal": align, "sinks": sinks}
            return structure("prefix_lm", {"causal": align, "prefix_len": sinks}, kwargs)
        left = hi - lo
        if left < 0:
            return None
        if sinks == 0:
            kwargs = {"causal": align, "window": (left, 0)}
            return structure("causal_window", {"causal": align, "left": left}, kwargs)
        params = {"causal": align, "left": left, "right": 0, "sinks": sinks}
        return structure("sinks", params, {"causal": align, "window": (left, 0), "sinks": sinks})
    left, right = (None if lo is None else -lo), hi
    if (left is not None and left < 0) or (right is not None and right < 0):
        return None  # the band misses the diagonal: softmax_attention has no such window
    if sinks == 0:
        params = {"left": left, "right": right}
        return structure("sliding_window", params, {"window": (left, right)})
    params = {"causal": False, "left": left, "right": right, "sinks": sinks}
    return structure("sinks", params, {"window": (left, right), "sinks": sinks})


def recognise_documents(attend: torch.Tensor) -> MaskStructure | None:
    """Block-diagonal contiguous segments (packed documents), plain or causal."""
    rows, cols = attend.shape
    if rows != cols or rows < 2:
        return None
    # A token starts a new document iff it cannot see its predecessor.
    starts = ~attend.diagonal(-1)
    doc = torch.cat([torch.zeros(1, dtype=torch.int64), starts.to(torch.int64).cumsum(0)])
    for causal in (False, True):

        def same_doc(query: torch.Tensor, causal: bool = causal) -> torch.Tensor:
            out = doc[query][:, None] == doc[None, :]
            return out & (torch.arange(cols)[None, :] <= query[:, None]) if causal else out

        if matches(attend, same_doc):
            ids = tuple(int(i) for i in doc)
            kwargs: dict[str, object] = {"documents": True}
            if causal:
                kwargs["causal"] = "top_left"
            return structure("documents", {"doc_ids": ids, "causal": causal}, kwargs)
    return None
