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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir.cascade import Cascade
from einscade.ir.expr import Expr, substitute
from einscade.ir.printer import print_expr

__all__ = [
    "MASKED_AT",
    "MaskStructure",
    "halo_axis_mask",
    "natten_axis_mask",
    "recognise_mask",
    "split_bias",
]

MASKED_AT = -1e4
"""Additive mask values at or below this hide their key (exp(-1e4) underflows in float32)."""

# Candidate matrices are checked on this many spread-out query rows before the full matrix,
# so a family that does not fit is rejected without building a [P, M] tensor.
_SAMPLE_ROWS = 16
# Rows read to fit a band's edges; a wrong fit is only a missed family (the check is exact).
_FIT_ROWS = 64
# Per-axis parameter search falls back to trying every stride / block only on short axes;
# longer axes rely on the candidates derived from the window starts alone.
_EXHAUSTIVE_AXIS = 128

_SEQUENCE_FAMILIES = ("full", "causal", "sliding_window", "causal_window", "sinks", "prefix_lm")
_BUILDERS: dict[str, Callable[..., Cascade]] = {
    **dict.fromkeys((*_SEQUENCE_FAMILIES, "documents"), softmax_attention),
    **dict.fromkeys(("blocked", "maxvit_grid"), maxvit_attention),
    "halo": halo_attention,
    "neighborhood": neighborhood_attention,
}

Rows = Callable[[torch.Tensor], torch.Tensor]  # query indices [R] -> candidate rows [R, M]


@dataclass(frozen=True, slots=True)
class MaskStructure:
    """A recognised mask: its family, parameters, and how to build the equal cascade."""

    family: str
    params: tuple[tuple[str, object], ...]
    kwargs: tuple[tuple[str, object], ...]

    def param(self, name: str) -> object:
        """One parameter by name (``structure.param("left")``)."""
        return dict(self.params)[name]

    def builder_kwargs(self) -> dict[str, object]:
        """Keyword arguments of :attr:`builder` giving a cascade with exactly this mask."""
        return dict(self.kwargs)

    @property
    def builder(self) -> Callable[..., Cascade]:
        """The attention-library builder of this family."""
        return _BUILDERS[self.family]

    def lookup_tensors(self) -> dict[str, torch.Tensor]:
        """Input tensors the built cascade reads in its predicate (``doc`` for documents)."""
        if self.family != "documents":
            return {}
        return {"doc": torch.tensor(self.param("doc_ids"), dtype=torch.int64)[None]}

    def build(self, **options: object) -> Cascade:
        """``builder(**builder_kwargs(), **options)``; options such as ``scale``."""
        return self.builder(**self.builder_kwargs(), **options)

    def predicate_text(self) -> str:
        """The mask as one IR predicate, lets and constants inlined ("" for ``full``).

        Written in the built cascade's names: ``p``/``m`` with sizes ``P``/``M``, or the
        grid axes ``px, mx, ...`` of ``grid p = (px, ...)``.
        """
        cascade = self.build()
        qk = next(s for s in cascade.einsums() if s.target == "QK")
        if qk.predicate is None:
            return ""
        return print_expr(_inline_constants(qk.predicate, cascade))


def _inline_constants(expr: Expr, cascade: Cascade) -> Expr:
    bindings: dict[str, Expr] = {let.name: let.value for let in cascade.lets}
    bindings |= {s.name: s.value for s in cascade.sizes}
    bindings |= {
        p.name: p.default for p in cascade.params if p.kind == "int" and p.default is not None
    }
    for _ in range(len(bindings) + 1):  # lets name lets and sizes name sizes: to a fixpoint
        inlined = substitute(expr, bindings)
        if inlined == expr:
            break
        expr = inlined
    return expr


def _structure(family: str, params: dict[str, object], kwargs: dict[str, object]) -> MaskStructure:
    return MaskStructure(family, tuple(params.items()), tuple(kwargs.items()))


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def recognise_mask(
    mask: torch.Tensor, *, grid: tuple[int, ...] | None = None
) -> MaskStructure | None:
    """The structure of a constant attention mask, or None if it has none we know.

    Args:
        mask: ``[..., P, M]``; boolean (True = attend) or additive float (0 = attend,
            ``-inf`` or ``<= MASKED_AT`` = masked; any other value is a real bias: None,
            see :func:`split_bias`). Leading dims must be broadcast dims or equal slices.
        grid: the row-major token grid (1 to 3 axes, product ``P == M``) enabling the
            vision families.

    Raises:
        ValueError: ``mask`` has fewer than 2 dims, or ``grid`` does not tile the mask.
    """
    attend = _attend_matrix(mask)
    if attend is None:
        return None
    axes = _check_grid(grid, *attend.shape)
    if bool(attend[_spread(attend.shape[0], _SAMPLE_ROWS)].all()) and bool(attend.all()):
        return _structure("full", {}, {})
    found = _recognise_band(attend) or _recognise_documents(attend)
    if found is None and axes is not None and len(axes) <= 3:
        found = _recognise_grid(attend, axes)
    return found


def split_bias(
    tensor: torch.Tensor, *, masked_at: float = MASKED_AT
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split an additive float mask/bias into ``(attend, bias)``.

    ``attend`` (bool, same shape) is False where the value is ``-inf`` or ``<= masked_at``;
    ``bias`` is the finite remainder with 0 at masked points, or None when it is all zero.
    A bool tensor is returned as ``(tensor, None)``. Swin fills its shifted-window mask with
    -100: pass ``masked_at=-50`` to treat that as a mask (it differs from exact masking by
    ``exp(-100)`` relative, unless a whole row is masked).

    Raises:
        ValueError: the tensor holds NaN or +inf, or is neither bool nor floating.
    """
    if tensor.dtype == torch.bool:
        return tensor, None
    if not tensor.is_floating_point():
        raise ValueError(f"split_bias: expected a bool or float tensor, got {tensor.dtype}")
    bad = torch.isnan(tensor) | (tensor == math.inf)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"split_bias: value {float(tensor[where])} at index {where} is not a bias")
    attend = tensor > masked_at
    bias = tensor.masked_fill(~attend, 0.0)
    return attend, None if not bool(bias.any()) else bias


def _attend_matrix(mask: torch.Tensor) -> torch.Tensor | None:
    """The ``[P, M]`` bool matrix of a mask, or None for a bias or differing slices."""
    if mask.dim() < 2:
        raise ValueError(
            f"recognise_mask: expected a [..., P, M] mask, got shape {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        attend = mask
    elif mask.is_floating_point():
        attend = mask == 0
        if not bool((attend | (mask <= MASKED_AT)).all()):
            return None  # a real bias (or NaN): the mask part alone is not this tensor
    else:
        return None  # integer masks are ambiguous (0/1 keep or 0/-big add): the caller decides
    rows, cols = attend.shape[-2:]
    if rows == 0 or cols == 0:
        return None
    slices = attend.reshape(-1, rows, cols)
    if slices.shape[0] > 1 and not bool((slices == slices[:1]).all()):
        return None
    return slices[0].cpu().contiguous()  # small index tensors are built on the CPU


def _check_grid(grid: tuple[int, ...] | None, rows: int, cols: int) -> tuple[int, ...] | None:
    if grid is None:
        return None
    axes = tuple(grid)
    if not axes or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in axes):
        raise ValueError(f"recognise_mask: grid must be positive ints, got {grid!r}")
    if not rows == cols == math.prod(axes):
        raise ValueError(
            f"recognise_mask: grid {axes} has {math.prod(axes)} tokens but the mask is "
            f"[{rows}, {cols}]"
        )
    return axes


def _matches(attend: torch.Tensor, rows: Rows) -> bool:
    """Whether the candidate equals ``attend`` everywhere: sampled rows first, then all."""
    n = attend.shape[0]
    sample = _spread(n, _SAMPLE_ROWS)
    if not torch.equal(rows(sample), attend[sample]):
        return False
    return torch.equal(rows(torch.arange(n)), attend)


def _spread(n: int, count: int) -> torch.Tensor:
    """Up to ``count`` row indices spread over ``0 .. n - 1``, both ends included."""
    return torch.linspace(0, n - 1, min(n, count)).round().long().unique()


def _first_true(matrix: torch.Tensor) -> torch.Tensor:
    """Column of the first True per row (0 for an empty row)."""
    return matrix.to(torch.uint8).argmax(1)


def _last_true(matrix: torch.Tensor) -> torch.Tensor:
    """Column of the last True per row (``cols - 1`` for an empty row)."""
    return matrix.shape[1] - 1 - _first_true(matrix.flip(1))


def _run_lengths(values: torch.Tensor) -> set[int]:
    return {int(n) for n in torch.unique_consecutive(values, return_counts=True)[1]}


# --------------------------------------------------------------------------------------
# Sequence families: a diagonal band (causal, windows) plus sinks, and documents
# --------------------------------------------------------------------------------------


def _recognise_band(attend: torch.Tensor) -> MaskStructure | None:
    """Band ``lo <= m - p <= hi`` (top-left coordinates), optionally OR the first S keys.

    The edges are read off a sample of rows, so a mask that is no band costs one sampled
    check; the full check comes last. Leading all-True columns are first taken as the
    band's own keys, then as sinks.
    """
    rows, cols = attend.shape
    sample = _spread(rows, _FIT_ROWS)
    full_columns = _leading_full_columns(attend, attend[sample])
    for skip in dict.fromkeys((0, full_columns)):
        bounds = _fit_band(attend, sample, skip)
        if bounds is None:
            continue
        lo, hi = bounds
        sinks = _needed_sinks(rows, lo, hi, skip)
        if _matches(attend, _band_rows(cols, lo, hi, sinks)):
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
    first, last = skip + _first_true(rest), skip + _last_true(rest)
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
                return _structure("causal", {"causal": align}, {"causal": align})
            kwargs = {"causal": align, "sinks": sinks}
            return _structure("prefix_lm", {"causal": align, "prefix_len": sinks}, kwargs)
        left = hi - lo
        if left < 0:
            return None
        if sinks == 0:
            kwargs = {"causal": align, "window": (left, 0)}
            return _structure("causal_window", {"causal": align, "left": left}, kwargs)
        params = {"causal": align, "left": left, "right": 0, "sinks": sinks}
        return _structure("sinks", params, {"causal": align, "window": (left, 0), "sinks": sinks})
    left, right = (None if lo is None else -lo), hi
    if (left is not None and left < 0) or (right is not None and right < 0):
        return None  # the band misses the diagonal: softmax_attention has no such window
    if sinks == 0:
        params = {"left": left, "right": right}
        return _structure("sliding_window", params, {"window": (left, right)})
    params = {"causal": False, "left": left, "right": right, "sinks": sinks}
    return _structure("sinks", params, {"window": (left, right), "sinks": sinks})


def _recognise_documents(attend: torch.Tensor) -> MaskStructure | None:
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

        if _matches(attend, same_doc):
            ids = tuple(int(i) for i in doc)
            kwargs: dict[str, object] = {"documents": True}
            if causal:
                kwargs["causal"] = "top_left"
            return _structure("documents", {"doc_ids": ids, "causal": causal}, kwargs)
    return None


# --------------------------------------------------------------------------------------
# Grid families: separable per-axis windows on the row-major token grid
# --------------------------------------------------------------------------------------


class _NattenAxis(NamedTuple):
    """NATTEN parameters of one axis, in ``natten_axis_mask``'s argument order."""

    kernel: int
    stride: int
    dilation: int
    causal: bool


def natten_axis_mask(
    length: int, kernel: int, stride: int, dilation: int, causal: bool
) -> torch.Tensor:
    """``[L, L]`` bool: NATTEN 0.21 window of one axis (docs/neighborhood.md), vectorised."""
    x = torch.arange(length)
    group, pos = x % dilation, x // dilation
    group_len = length // dilation + (group < length % dilation).to(torch.int64)
    if causal:
        leader = torch.minimum((pos // stride) * stride + stride - 1, group_len - 1)
        start = (leader - kernel + 1).clamp(min=0)
        end = torch.minimum(pos + 1, group_len)
    else:
        left = kernel // 2
        right = kernel - 1 - left
        leader = torch.minimum((pos // stride) * stride + stride // 2, group_len - 1)
        start = (leader - left).clamp(min=0)
        # Windows crossing the end shift back inward: every query sees `kernel` keys.
        start = start + (group_len - right - leader - 1).clamp(max=0)
        end = start + kernel
    key = x[None, :]
    key_pos = key // dilation
    same_group = key % dilation == group[:, None]
    return same_group & (start[:, None] <= key_pos) & (key_pos < end[:, None])


def halo_axis_mask(length: int, block: int, halo: int) -> torch.Tensor:
    """``[L, L]`` bool: HaloNet block of ``block`` queries seeing ``halo`` more keys each side."""
    x = torch.arange(length)
    start = (x // block) * block - halo
    key = x[None, :]
    return (start[:, None] <= key) & (key < start[:, None] + block + 2 * halo)


def _recognise_grid(attend: torch.Tensor, axes: tuple[int, ...]) -> MaskStructure | None:
    """Fit each axis separately, name the family, then verify the whole separable mask.

    Every fitted axis equals the axis read off the mask, so if the AND of the fitted axes
    is not the mask, no other family of separable windows can be either.
    """
    per_axis = _axis_matrices(attend, axes)
    named = _name_grid_family(axes, per_axis)
    if named is None:
        return None
    structure, mats = named
    return structure if _matches(attend, _separable_rows(axes, mats)) else None


def _name_grid_family(
    axes: tuple[int, ...], per_axis: list[torch.Tensor]
) -> tuple[MaskStructure, list[torch.Tensor]] | None:
    """The plainest family fitting every axis: blocked, MaxViT grid, halo, NATTEN."""
    fits = [_fit_natten_axis(mat) for mat in per_axis]
    natten = [f for f in fits if f is not None] if all(fits) else None
    grid: dict[str, object] = {"grid": axes}
    if natten is not None:
        mats = [natten_axis_mask(n, *f) for n, f in zip(axes, natten, strict=True)]
        kernel = tuple(f.kernel for f in natten)
        whole = [not f.causal and f.stride == f.kernel for f in natten]
        pairs = list(zip(axes, natten, whole, strict=True))
        if all(w and f.dilation == 1 and n % f.kernel == 0 for n, f, w in pairs):
            kwargs = {**grid, "size": kernel, "mode": "block"}
            return _structure("blocked", {**grid, "window": kernel}, kwargs), mats
        if all(w and f.kernel * f.dilation == n for n, f, w in pairs):
            kwargs = {**grid, "size": kernel, "mode": "grid"}
            return _structure("maxvit_grid", {**grid, "size": kernel}, kwargs), mats
    # Where NATTEN fits, searching every block size is wasted: NATTEN names it anyway.
    halos = [_fit_halo_axis(mat, exhaustive=natten is None) for mat in per_axis]
    if all(halos):
        block = tuple(h[0] for h in halos if h is not None)
        halo = tuple(h[1] for h in halos if h is not None)
        mats = [halo_axis_mask(*args) for args in zip(axes, block, halo, strict=True)]
        params = {**grid, "block": block, "halo": halo}
        return _structure("halo", params, params), mats
    if natten is not None:
        per_axis_params = zip(_NattenAxis._fields, zip(*natten, strict=True), strict=True)
        params = {**grid, **dict(per_axis_params)}
        return _structure("neighborhood", params, params), mats
    return None


def _axis_matrices(attend: torch.Tensor, axes: tuple[int, ...]) -> list[torch.Tensor]:
    """Per axis, which key coordinates each query coordinate sees, the other coordinates 0.

    Exact for a separable mask whose queries see themselves; the caller verifies anyway.
    """
    cube = attend.reshape(*axes, *axes)
    mats = []
    for axis in range(len(axes)):
        index = tuple(slice(None) if other == axis else 0 for other in range(len(axes)))
        mats.append(cube[index + index])
    return mats


def _separable_rows(axes: tuple[int, ...], mats: list[torch.Tensor]) -> Rows:
    """Rows of the AND over axes of the per-axis matrices, flattened row-major."""

    def rows(query: torch.Tensor) -> torch.Tensor:
        out = torch.ones((len(query),) + (1,) * len(axes), dtype=torch.bool)
        for axis, (length, mat) in enumerate(zip(axes, mats, strict=True)):
            coord = (query // math.prod(axes[axis + 1 :])) % length
            shape = [len(query)] + [1] * len(axes)
            shape[axis + 1] = length
            out = out & mat[coord].reshape(shape)
        return out.reshape(len(query), -1)

    return rows


def _fit_natten_axis(mat: torch.Tensor) -> _NattenAxis | None:
    """NATTEN parameters of one axis: kernel from the row sizes, dilation from the gaps,
    stride from the runs of equal window starts; each candidate verified on the axis."""
    length = mat.shape[0]
    if not bool(mat.diagonal().all()):
        return None  # a NATTEN query always sees itself
    counts = mat.sum(1)
    kernel = int(counts.max())
    causal = kernel > 1 and not bool(mat.triu(1).any())
    if not causal and not bool((counts == kernel).all()):
        return None  # non-causal windows shift inward: every query sees `kernel` keys
    dilation = _dilation(mat, counts)
    if kernel * dilation > length:
        return None
    starts = _first_true(mat)[::dilation] // dilation  # window starts of group 0
    derived = {s for s in _run_lengths(starts) if s <= kernel} | {1, kernel}
    # Where strides give the same mask, name it plainly: blocked (stride == kernel) for a
    # non-causal axis, else the smallest stride (1 = neighborhood attention).
    order = sorted(derived, key=lambda s: (causal or s != kernel, s))
    if length <= _EXHAUSTIVE_AXIS:
        order += [s for s in range(1, kernel + 1) if s not in derived]
    for stride in order:
        if torch.equal(natten_axis_mask(length, kernel, stride, dilation, causal), mat):
            return _NattenAxis(kernel, stride, dilation, causal)
    return None


def _dilation(mat: torch.Tensor, counts: torch.Tensor) -> int:
    """Gap between the first two keys of a row (all NATTEN gaps equal the dilation)."""
    several = counts >= 2
    if not bool(several.any()):
        return 1
    first = _first_true(mat)
    rest = mat.clone()
    rest[torch.arange(mat.shape[0]), first] = False
    return int((_first_true(rest) - first)[several].min())


def _fit_halo_axis(mat: torch.Tensor, *, exhaustive: bool) -> tuple[int, int] | None:
    """HaloNet (block, halo) of one axis: block from the runs of equal first/last keys,
    halo from how far the unclipped windows reach past their block."""
    length = mat.shape[0]
    if not bool(mat.diagonal().all()):
        return None
    first, last = _first_true(mat), _last_true(mat)
    derived = sorted(_run_lengths(first) | _run_lengths(last))
    order = list(derived)
    if exhaustive and length <= _EXHAUSTIVE_AXIS:
        order += [b for b in range(1, length + 1) if b not in derived]
    x = torch.arange(length)
    for block in order:
        base = (x // block) * block
        halo = int(torch.maximum(base - first, last + 1 - base - block).max())
        if halo >= 0 and torch.equal(halo_axis_mask(length, block, halo), mat):
            return block, halo
    return None
