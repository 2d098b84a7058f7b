"""What discovery records about a site, and the constant lookups lifting needs.

:class:`Site` is one attention site (where, what it reads, its cascade); :class:`SiteValues`
holds the onnx-ir handles the rewrite modes need. :class:`ConstantLookup` answers "is this
value a constant, and which" (folding the model once when needed) and describes masks,
recognising the structure of constant ones through the ``recognise`` hook it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer

from einscade.frontends.onnx.masks import RecognisedMask
from einscade.frontends.onnx.patterns import scalar_value
from einscade.frontends.onnx.shapes import shape_text
from einscade.ir.cascade import Cascade

Recogniser = Callable[[np.ndarray], RecognisedMask | None]


@dataclass(frozen=True)
class SiteValues:
    """The onnx-ir handles of a site, for rewriting it."""

    nodes: tuple[ir.Node, ...]  # in graph order
    shared: tuple[ir.Node, ...]  # nodes of the site that others read too: copied, not moved
    output: ir.Value
    query: ir.Value
    # K as [..., M, E] is key, Transpose(key, key_perm) or Reshape(key, key_reshape);
    # None when the exported form hides it (dynamic Reshape -> Transpose -> Reshape).
    key: ir.Value | None
    key_perm: tuple[int, ...] | None
    key_reshape: tuple[int, ...] | None
    value: ir.Value
    mask: ir.Value | None
    # Swin's per-window mask: (shape of the windowed view, window mask, shape back), added
    # between two Reshapes after ``mask``.
    window: tuple[ir.Value, ir.Value, ir.Value] | None = None

    @property
    def masked(self) -> bool:
        """Whether anything is added to the scores (the ops' additive mask input)."""
        return self.mask is not None or self.window is not None


@dataclass(frozen=True)
class Site:
    """One attention site: where it is, what it reads, and its cascade."""

    index: int
    # "decomposed" (MatMul ... Softmax ... MatMul), "attention-op" (the standard op),
    # "ms-attention" / "ms-mha" / "ms-gqa" (com.microsoft Attention / MultiHeadAttention /
    # GroupQueryAttention)
    family: str
    container: str  # "graph" or "function DOMAIN::NAME"
    node_names: tuple[str, ...]
    q: str
    k: str
    v: str
    mask: str | None
    output: str
    shapes: tuple[tuple[str, str], ...]  # (role, "[2, 4, 6, 8]")
    layout: str
    scale: float | None  # None: not known before run time (or the op's 1/sqrt(E) default)
    scale_form: str
    causal: bool | str
    kv_heads: bool
    mask_form: str | None
    notes: tuple[str, ...]
    cascade: Cascade
    values: SiteValues = field(compare=False, repr=False)
    mask_structure: RecognisedMask | None = None  # a constant mask's recognised structure
    # What a fused op computes that the cascade does not (rotary, ...): never rewritten.
    unsupported: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``site N (output 'name')``: how reports and errors refer to the site."""
        return f"site {self.index} (output '{self.output}')"

    @property
    def mask_family(self) -> str | None:
        """``causal (causal=top_left)`` for a recognised constant mask, else None."""
        return None if self.mask_structure is None else self.mask_structure.describe()


@dataclass(frozen=True)
class MaskInfo:
    """How a site's mask input is described and lifted."""

    form: str | None  # "constant float [2, 1, 8, 8]", None without a mask
    recognised: RecognisedMask | None
    notes: tuple[str, ...]


class ConstantLookup:
    """Values that are constant once folded (legacy exports compute the scale from shapes).

    Folding runs once, lazily, on a clone with onnxscript's constant folder; value names
    survive folding, so the clone answers by name.
    """

    def __init__(self, model: ir.Model, recognise: Recogniser | None = None):
        self._model = model
        self._recognise = recognise
        self._folded: dict[str, ir.Value] | None = None

    def tensor(self, value: ir.Value | None) -> np.ndarray | None:
        if value is None:
            return None
        if value.const_value is not None:
            return np.asarray(value.const_value.numpy())
        scalar = scalar_value(value)
        if scalar is not None:
            return np.asarray(scalar)
        folded = self._fold().get(value.name or "")
        if folded is None or folded.const_value is None:
            return None
        return np.asarray(folded.const_value.numpy())

    def mask(self, value: ir.Value | None) -> MaskInfo:
        """The mask's form; for a constant, its structure through the recognise hook."""
        if value is None:
            return MaskInfo(None, None, ())
        dtype = value.dtype.name.lower() if value.dtype is not None else "?"
        const = self.tensor(value)
        if const is None:
            return MaskInfo(f"{dtype} {shape_text(value.shape)}", None, ())
        form = f"constant {dtype} {shape_text(value.shape)}"
        recognised = self._recognise(const) if self._recognise is not None else None
        if recognised is None:
            return MaskInfo(form, None, ("constant mask lifted as the cascade's bias input",))
        return MaskInfo(form, recognised, recognised.notes)

    def _fold(self) -> dict[str, ir.Value]:
        if self._folded is None:
            clone = self._model.clone()
            onnxscript.optimizer.fold_constants(clone)
            values = {v.name: v for node in clone.graph for v in node.outputs if v.name}
            values.update(clone.graph.initializers)
            self._folded = values
        return self._folded


def shapes_of(**values: ir.Value | None) -> tuple[tuple[str, str], ...]:
    """(role, shape text) of the values given, None skipped."""
    return tuple((role, shape_text(v.shape)) for role, v in values.items() if v is not None)


def layout_of(shape: ir.Shape | None) -> str:
    """The head layout a Q of this rank implies."""
    rank = None if shape is None else len(shape)
    return {
        4: "[batch, heads, tokens, dim]",
        3: "[batch*heads, tokens, dim] (cascade b = 1)",
        2: "[tokens, dim] (cascade b = h = 1)",
    }.get(rank, "unknown rank" if rank is None else f"rank {rank} (leading dims are batch)")
