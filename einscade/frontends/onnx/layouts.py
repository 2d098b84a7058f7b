"""Shapes and node building shared by the rewrites into fused attention ops.

Both the standard ``Attention`` op and onnxruntime's ``MultiHeadAttention`` /
``GroupQueryAttention`` need K as ``[..., M, E]`` (the chain may only have K^T), batch and
head counts that provably fit, and a mask that broadcasts to the scores. :class:`Emitter`
builds a site's replacement nodes, named after the site's output.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from einscade.frontends.onnx.records import Site
from einscade.frontends.onnx.shapes import same_dim, shape_text

FLOATS = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)


def key_shape(site: Site) -> ir.Shape | None:
    """The shape of K as ``[..., M, E]`` (after the Transpose or Reshape the site implies)."""
    v = site.values
    if v.key is None:
        return None
    if v.key_reshape is not None:
        return ir.Shape(v.key_reshape)
    if v.key.shape is None or v.key_perm is None:
        return v.key.shape
    if len(v.key_perm) != len(v.key.shape):
        return None
    return ir.Shape([v.key.shape[p] for p in v.key_perm])


def fused_op_checks(site: Site, takes: str, dtypes: frozenset) -> tuple[list[str], list | None]:
    """The checks every fused-op rewrite starts with: reasons against the site, and the shapes
    of Q, K as ``[..., M, E]`` and V (None where they cannot be known; the reasons say why).
    ``takes`` names the op in the reasons ("Attention takes", "the ops take")."""
    v = site.values
    reasons = [n for n in site.notes if n.startswith("softmax runs in")]
    if site.family == "decomposed" and site.scale is None:
        reasons.append(f"the scale is computed at run time ({takes} a constant)")
    if v.key is None:
        return [*reasons, "K is only available transposed, through dynamic Reshapes"], None
    if v.query.dtype not in dtypes:
        names = ", ".join(sorted(t.name.lower() for t in dtypes))
        reasons.append(f"Q has dtype {v.query.dtype} ({takes} {names})")
    shapes = [v.query.shape, key_shape(site), v.value.shape]
    if any(s is None for s in shapes):
        return [*reasons, "the ranks of Q, K, V are unknown"], None
    return reasons, shapes


def head_blockers(q: ir.Shape, k: ir.Shape, v: ir.Shape) -> list[str]:
    """Why Q, K, V of ranks 3 or 4 (SDPA layout) do not fit one attention op."""
    if len(q) == 3:  # batch*heads in axis 0
        if same_dim(q[0], k[0]) and same_dim(k[0], v[0]):
            return []
        return [f"batch*heads of Q, K, V differ or are unknown ({q[0]}, {k[0]}, {v[0]})"]
    reasons = []
    if not (same_dim(q[0], k[0]) and same_dim(k[0], v[0])):
        reasons.append(f"batch of Q, K, V differ or are unknown ({q[0]}, {k[0]}, {v[0]})")
    if not same_dim(k[1], v[1]):
        reasons.append(f"K and V have different heads ({k[1]}, {v[1]})")
    grouped = isinstance(q[1], int) and isinstance(k[1], int) and k[1] and q[1] % k[1] == 0
    if not (same_dim(q[1], k[1]) or grouped):
        reasons.append(f"Q heads {q[1]} are not a multiple of K heads {k[1]}")
    return reasons


def mask_blockers(site: Site) -> list[str]:
    """Why the site's (float) mask cannot be the op's additive mask."""
    mask = site.values.mask
    if mask is None:
        return []
    if mask.dtype != site.values.query.dtype:
        return [f"the mask has dtype {mask.dtype}, Q has {site.values.query.dtype}"]
    scores = next(n for n in site.values.nodes if n.op_type == "Softmax").inputs[0].shape
    if mask.shape is None or scores is None:
        return ["the mask or score shapes are unknown"]
    if len(mask.shape) > len(scores):
        return [f"the mask {shape_text(mask.shape)} has more axes than the scores"]
    for dim, score_dim in zip(reversed(mask.shape), reversed(scores), strict=False):
        # A valid Add cannot stretch a score axis longer than 1: an unknown mask dim there
        # is 1 or equal to it.
        fits = isinstance(score_dim, int) and score_dim > 1 and not isinstance(dim, int)
        if not (dim == 1 or fits or same_dim(dim, score_dim)):
            return [
                f"the mask {shape_text(mask.shape)} does not broadcast to the scores "
                f"{shape_text(scores)}"
            ]
    return []


def dropped_mask(site: Site) -> str | None:
    """How a constant mask is expressed without its tensor: ``"causal"`` (exactly causal,
    top-left, no bias), ``"nothing"`` (hides no key, no bias), else None (kept)."""
    recognised = site.mask_structure
    if site.values.mask is None or recognised is None:
        return None
    if recognised.hides_nothing():
        return "nothing"
    return "causal" if recognised.is_causal() == "top_left" else None


def attr(name: str, value) -> ir.Attr:
    """An attribute from a Python float, int, list of ints, or tensor."""
    if isinstance(value, float):
        return ir.Attr(name, ir.AttributeType.FLOAT, value)
    if isinstance(value, bool | int):
        return ir.Attr(name, ir.AttributeType.INT, int(value))
    if isinstance(value, list):
        return ir.Attr(name, ir.AttributeType.INTS, value)
    return ir.Attr(name, ir.AttributeType.TENSOR, value)


class Emitter:
    """Collects the nodes that replace one site; every name starts with ``tag``."""

    def __init__(self, tag: str):
        self.tag = tag
        self.nodes: list[ir.Node] = []

    def add(self, op: str, inputs, suffix: str, *, domain: str = "", **attrs) -> ir.Value:
        """Append ``op(inputs, **attrs)``; its one output is named ``{tag}_{suffix}``."""
        attributes = [attr(k, x) for k, x in attrs.items()]
        name = f"{self.tag}_{suffix}"
        node = ir.Node(domain, op, inputs, attributes, num_outputs=1, name=name)
        node.outputs[0].name = name
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, array: np.ndarray, suffix: str) -> ir.Value:
        return self.add("Constant", [], suffix, value=ir.tensor(array))

    def key(self, site: Site) -> ir.Value:
        """K as ``[..., M, E]``: the site's key with its Transpose or Reshape applied."""
        v = site.values
        key = v.key
        if v.key_perm is not None:
            key = self.add("Transpose", [key], "k", perm=list(v.key_perm))
        if v.key_reshape is not None:
            shape = self.const(np.array(v.key_reshape, np.int64), "k_shape")
            key = self.add("Reshape", [key, shape], "k")
        return key

    def bias(self, site: Site, key: ir.Value) -> tuple[ir.Value, int]:
        """The site's additive mask and its rank: the mask itself, or with a Swin window
        mask, the same Add/Reshape/Add/Reshape on zero scores (``key`` is K as [.., M, E])."""
        v = site.values
        if v.window is None:
            return v.mask, len(v.mask.shape)
        window_shape, window_mask, back = v.window
        rank = len(v.query.shape)
        leading = self.const(np.arange(rank - 1, dtype=np.int64), "bias_leading_axes")
        query_dims = self.add("Gather", [self.add("Shape", [v.query], "bias_q_shape"), leading],
                              "bias_q_dims")  # fmt: skip
        keys = self.dim(key, rank - 2, "bias_keys")
        shape = self.add("Concat", [query_dims, keys], "bias_scores_shape", axis=0)
        zero = ir.tensor(np.zeros(1, v.query.dtype.numpy()))
        scores = self.add("ConstantOfShape", [shape], "bias_zeros", value=zero)
        if v.mask is not None:
            scores = self.add("Add", [scores, v.mask], "bias_mask")
        windows = self.add("Reshape", [scores, window_shape], "bias_windows")
        windows = self.add("Add", [windows, window_mask], "bias_window_mask")
        return self.add("Reshape", [windows, back], "bias_full"), rank

    def dim(self, value: ir.Value, axis: int, suffix: str) -> ir.Value:
        """``Shape(value)[axis]`` as a 1-D int64 tensor of one element."""
        index = self.const(np.array([axis], np.int64), f"{suffix}_axis")
        return self.add("Gather", [self.add("Shape", [value], f"{suffix}_shape"), index], suffix)
