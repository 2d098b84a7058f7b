"""Constant masks of ONNX sites as cascade predicates (the ``sites.recognise`` hook).

An exporter often stores the mask as a constant: GPT-2's causal mask, ViT's all-visible
mask, a neighborhood or block window. :func:`recognise_constant` splits such a tensor into
its mask part and a finite bias (:func:`~einscade.frontends.mask_structure.split_bias`) and
names the mask part with :func:`~einscade.frontends.mask_structure.recognise_mask`, which
verifies the family element by element (a near miss gives no family, never a wrong one).
:func:`cascade_for` then builds the site's cascade from the family's builder, so the mask
becomes the predicate of ``QK`` and only a real bias stays an input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from einscade.frontends.mask_structure import (
    MASKED_AT,
    MaskStructure,
    recognise_mask,
    split_bias,
)
from einscade.frontends.softmax import softmax_attention
from einscade.ir.cascade import Cascade

# A single fill value at or below this (Swin's -100) marks masked points, not a bias: it
# differs from exact masking by exp(-100) relative.
FILL_AT = -50.0
# Larger constants are not searched (the search builds [P, M] candidates).
MAX_ELEMENTS = 1 << 26
_SEQUENCE = frozenset({"full", "causal", "sliding_window", "causal_window", "sinks", "prefix_lm"})


@dataclass(frozen=True)
class RecognisedMask:
    """The structure of a constant mask: its family (None: none known) and bias part."""

    structure: MaskStructure | None
    bias: bool  # a finite bias remains besides the masked points
    masked_at: float  # values at or below this are masked points
    notes: tuple[str, ...] = ()

    @property
    def family(self) -> str | None:
        return None if self.structure is None else self.structure.family

    def describe(self) -> str:
        """``causal (causal=top_left)``, ``full + bias``, ``unrecognised mask + bias``."""
        if self.structure is None:
            name = "unrecognised mask"
        else:
            params = ", ".join(f"{k}={v}" for k, v in self.structure.params if k != "doc_ids")
            name = f"{self.structure.family} ({params})" if params else self.structure.family
        return f"{name} + bias" if self.bias else name

    def is_causal(self) -> str | None:
        """The alignment when the mask is exactly causal with no bias, else None."""
        if self.bias or self.family != "causal":
            return None
        return str(self.structure.param("causal"))

    def hides_nothing(self) -> bool:
        """Every key visible and no bias: the mask can be dropped."""
        return self.family == "full" and not self.bias


def recognise_constant(mask: np.ndarray) -> RecognisedMask | None:
    """The mask structure of a constant additive (float) or boolean mask, or None when it
    has neither a known family nor a separable bias (it stays the cascade's bias input)."""
    if mask.ndim < 2 or mask.size == 0 or mask.size > MAX_ELEMENTS:
        return None
    if mask.dtype == np.bool_:
        tensor = torch.from_numpy(np.array(mask, copy=True))
        structure = _recognise(tensor)
        return None if structure is None else RecognisedMask(structure, False, 0.5)
    if not np.issubdtype(mask.dtype, np.floating):
        return None
    tensor = torch.from_numpy(np.array(mask, dtype=np.float32, copy=True))
    if bool((torch.isnan(tensor) | (tensor == math.inf)).any()):
        return None
    masked_at, notes = _threshold(tensor)
    attend, bias = split_bias(tensor, masked_at=masked_at)
    structure = _recognise(attend)
    if structure is None and bias is None:
        return None  # a mask of no known family: the bias input is as good as it gets
    if structure is None and not bool(attend.all()):
        notes = (*notes, "its masked points form no known family: the bias input keeps them")
    return RecognisedMask(structure, bias is not None, masked_at, notes)


def _threshold(tensor: torch.Tensor) -> tuple[float, tuple[str, ...]]:
    """MASKED_AT, or a single fill value between it and FILL_AT (Swin's -100)."""
    fills = torch.unique(tensor[(tensor <= FILL_AT) & (tensor > MASKED_AT)])
    if len(fills) != 1:
        return MASKED_AT, ()
    fill = float(fills[0])
    return fill, (f"the fill value {fill:g} is taken as masked (exp({fill:g}) is negligible)",)


def _recognise(attend: torch.Tensor) -> MaskStructure | None:
    """recognise_mask, with the square token grid when the queries and keys form one."""
    rows, cols = attend.shape[-2:]
    side = math.isqrt(rows)
    grid = (side, side) if rows == cols and side > 1 and side * side == rows else None
    return recognise_mask(attend, grid=grid)


def cascade_for(
    recognised: RecognisedMask | None,
    *,
    has_mask: bool,
    causal: bool | str = False,
    kv_heads: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
) -> tuple[Cascade, list[str]]:
    """The site's cascade: the recognised family's builder where it applies, else
    ``softmax_attention`` with the mask as its ``bias`` input; with notes on the choice."""
    plain = {"causal": causal, "kv_heads": kv_heads, "scale": scale, "softcap": softcap}
    if recognised is None:
        return softmax_attention(**plain, bias=has_mask), []
    structure = recognised.structure
    bias_note = "the finite part of the mask (0 at its masked points) is the bias input"
    notes = [bias_note] if recognised.bias and structure is not None else []
    if structure is None or structure.family == "full":
        if structure is not None:
            notes.append("the constant mask hides no key: no predicate")
        return softmax_attention(**plain, bias=recognised.bias), notes
    if causal:
        return softmax_attention(**plain, bias=True), [
            "a constant mask besides the op's causal flag: lifted as the bias input"
        ]
    if structure.family in _SEQUENCE or structure.family == "documents":
        options = {"kv_heads": kv_heads, "scale": scale, "softcap": softcap}
        cascade = structure.build(**options, bias=recognised.bias)
        if structure.family == "documents":
            notes.append(f"document ids of the doc[b, m] input: {structure.param('doc_ids')}")
        return cascade, notes
    blockers = [
        what
        for what, present in (
            ("grouped KV heads", kv_heads),
            ("a soft cap", softcap),
            ("a bias", recognised.bias),
        )  # fmt: skip
        if present
    ]
    if blockers:
        why = f"{structure.family} cascades take no {', '.join(blockers)}"
        return softmax_attention(**plain, bias=True), [
            f"constant mask recognised as {recognised.describe()}, but {why}: lifted as bias"
        ]
    return structure.build(scale=scale), notes
