"""Recognise the structure of a constant attention mask, shared by the torch.fx and ONNX frontends.

A captured model often hands attention a constant: a ``tril`` buffer, a sliding-window mask
built from ``arange`` comparisons, a window mask of a vision model. :func:`recognise_mask`
names the family and its parameters so the site becomes a structured cascade (and the
sparsity layout applies) instead of a dense mask tensor. :func:`split_bias` separates an
additive float tensor into that mask and a finite bias (Swin's relative-position table plus
its shifted-window mask).

Trust rule: every candidate is rebuilt as a boolean matrix from its own formulas and compared
with the constant element by element; a near miss gives None, never a wrong structure.

Families (``MaskStructure.family``), tried in this order, with their ``params``:

- ``full``: every key visible.
- ``causal``: ``causal`` is ``"top_left"`` (``m <= p``) or ``"bottom_right"``
  (``m - M <= p - P``; a single query's window is bottom-right, as in decoding).
- ``sliding_window``: ``left``, ``right`` (None = unbounded) around the top-left diagonal;
  a non-causal bottom-right window is reported in top-left terms (``left - (M - P)``,
  ``right + (M - P)``) and is not recognised when a side becomes negative, as
  ``softmax_attention`` cannot express it.
- ``causal_window``: ``causal`` (alignment), ``left``.
- ``sinks``: ``causal`` (alignment or False), ``left``, ``right``, ``sinks`` (first keys
  always visible).
- ``prefix_lm``: ``causal`` (alignment), ``prefix_len``. A constant prefix is the same mask as
  ``prefix_len`` sinks on a causal mask, so the builder gets ``sinks``: a static predicate
  needs no ``prefix`` lookup tensor. Every query seeing only the same first keys is a
  prefix covering every query (with ``P <= prefix_len``; a key-padding mask with fewer
  keys than queries has no builder form and gives None).
- ``documents``: ``doc_ids`` (one id per token, contiguous segments), ``causal`` (bool).
- with ``grid`` only, on the row-major token grid (``params["grid"]``):
  ``blocked`` (``window``: Swin / MaxViT block windows), ``maxvit_grid`` (``size``),
  ``halo`` (``block``, ``halo``), ``neighborhood`` (NATTEN ``kernel``, ``stride``,
  ``dilation``, ``causal``, one entry per axis). Where two describe the same mask the
  simpler predicate wins (a HaloNet mask can equal a strided NATTEN one).

Modules: ``common`` (:class:`MaskStructure`, the element-by-element check), ``recognise``
(the entry points), ``sequence`` (bands, sinks, documents), ``grid`` (separable windows).
"""

from einscade.frontends.mask_structure.common import MASKED_AT, MaskStructure
from einscade.frontends.mask_structure.grid import halo_axis_mask, natten_axis_mask
from einscade.frontends.mask_structure.recognise import recognise_mask, split_bias

__all__ = [
    "MASKED_AT",
    "MaskStructure",
    "halo_axis_mask",
    "natten_axis_mask",
    "recognise_mask",
    "split_bias",
]
