"""Local attention on 1-D, 2-D and 3-D token grids: NATTEN neighborhoods, HaloNet, MaxViT.

Every builder returns the 3-pass softmax cascade (QK, GM, SN, SD, A, AV) in SDPA layout
(``Q[b, h, p, e]``, ``K[b, h, m, e]``, ``V[b, h, m, f]`` -> ``AV[b, h, p, f]``) whose QK
statement carries the family's mask as a predicate. Tokens are flattened row-major.

Naming of the grid (why it looks the way it does):

- 1-D: the token ranks ``p`` and ``m`` are the axis itself and no size is declared. The
  axis length is ``P``, bound from Q's shape, so the printed cascade is correct for every
  sequence length; the ``grid`` argument only validates the window against that length.
- 2-D / 3-D: ``grid p = (px, py)`` / ``(pt, px, py)`` and the same for ``m``. A flat token
  count does not say how it factors into axes, so the query axis lengths are declared
  (``size PX = 7``) and the key axes are the same grid (``size MX = PX``).

Per-axis window terms are ``let`` names suffixed by the axis (``start_x``; no suffix in 1-D)
so a predicate reads like the formulas in docs/neighborhood.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from einscade.frontends.builder import CascadeBuilder
from einscade.ir.cascade import Cascade

__all__ = ["halo_attention", "maxvit_attention", "neighborhood_attention", "window_attention"]

_AXIS_LETTERS = {1: ("",), 2: ("x", "y"), 3: ("t", "x", "y")}


@dataclass(frozen=True, slots=True)
class _Axis:
    """One grid axis as the cascade names it, and its concrete length."""

    query: str  # query coordinate on this axis: "px" (or "p" in 1-D)
    key: str  # key coordinate: "mx" (or "m")
    length: str  # size symbol of the axis length: "PX" (or "P")
    suffix: str  # appended to let names: "_x" (or "")
    extent: int  # the length the builder was given
    position: int  # index of the axis in ``grid``, for error messages


# --------------------------------------------------------------------------------------
# Shared pieces: arguments, grid declarations, the softmax tail
# --------------------------------------------------------------------------------------


def _axes(family: str, grid: tuple[int, ...]) -> tuple[_Axis, ...]:
    shape = tuple(grid) if isinstance(grid, tuple | list) else (grid,)
    if len(shape) not in _AXIS_LETTERS:
        raise ValueError(f"{family}: grid must have 1, 2 or 3 axes, got {shape}")
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in shape):
        raise ValueError(f"{family}: grid axis lengths must be positive ints, got {shape}")
    if len(shape) == 1:
        return (_Axis("p", "m", "P", "", shape[0], 0),)
    return tuple(
        _Axis(f"p{c}", f"m{c}", f"P{c.upper()}", f"_{c}", n, i)
        for i, (c, n) in enumerate(zip(_AXIS_LETTERS[len(shape)], shape, strict=True))
    )


def _per_axis(family: str, name: str, value: object, ndim: int) -> tuple:
    """Broadcast an int/bool, or check a tuple with one entry per axis."""
    if isinstance(value, tuple | list):
        if len(value) != ndim:
            raise ValueError(f"{family}: {name} has {len(value)} entries, grid has {ndim} axes")
        return tuple(value)
    return (value,) * ndim


def _check_int(family: str, axis: _Axis, name: str, value: object, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(
            f"{family}: axis {axis.position} (length {axis.extent}): {name} must be an int "
            f">= {least}, got {value!r}"
        )
    return value


def _grid_builder(name: str, axes: tuple[_Axis, ...]) -> CascadeBuilder:
    """A builder with the SDPA inputs and, on a multi-axis grid, the grid declarations."""
    b = CascadeBuilder(name, inputs=["Q[b, h, p, e]", "K[b, h, m, e]", "V[b, h, m, f]"])
    if len(axes) == 1:
        return b
    for axis in axes:
        b.size(axis.length, axis.extent)
    for axis in axes:
        b.size(axis.key.upper(), axis.length)
    b.grid("p", [a.query for a in axes])
    b.grid("m", [a.key for a in axes])
    return b


def _softmax_tail(b: CascadeBuilder, mask: str, scale: float | None) -> Cascade:
    """Append the masked 3-pass softmax (FuseMax's cascade) and build.

    The mask sits on QK only: a masked-out score does not exist, so the later statements
    inherit the sparsity and a query with no key gives AV = 0.
    """
    b.param("scale", "float", "1 / sqrt(E)" if scale is None else repr(float(scale)))
    b.stmt(f"QK[b, h, m, p] = Q[b, h, p, e] * K[b, h, m, e] * scale :: sum(e) if {mask}")
    b.stmt("GM[b, h, p] = QK[b, h, m, p] :: max(m)")
    b.stmt("SN[b, h, m, p] = exp(QK[b, h, m, p] - GM[b, h, p])")
    b.stmt("SD[b, h, p] = SN[b, h, m, p] :: sum(m)")
    b.stmt("A[b, h, m, p] = SN[b, h, m, p] / SD[b, h, p]")
    b.stmt("AV[b, h, p, f] = A[b, h, m, p] * V[b, h, m, f] :: sum(m)")
    b.output("AV")
    return b.build()


def _plus(expr: str, n: int) -> str:
    """``expr + n`` written without a ``+ 0`` or ``+ -1``."""
    if n == 0:
        return expr
    return f"{expr} + {n}" if n > 0 else f"{expr} - {-n}"


# --------------------------------------------------------------------------------------
# NATTEN
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Window:
    """NATTEN parameters of one axis."""

    kernel: int
    stride: int
    dilation: int
    causal: bool


def _natten_window(family: str, axis: _Axis, k: object, s: object, d: object, c: object) -> _Window:
    """Check one axis's parameters the way NATTEN does (window fits, stride <= kernel)."""
    kernel = _check_int(family, axis, "kernel", k, 1)
    stride = _check_int(family, axis, "stride", s, 1)
    dilation = _check_int(family, axis, "dilation", d, 1)
    if not isinstance(c, bool):
        raise ValueError(f"{family}: axis {axis.position}: causal must be a bool, got {c!r}")
    if kernel * dilation > axis.extent:
        raise ValueError(
            f"{family}: axis {axis.position} (length {axis.extent}): kernel {kernel} * "
            f"dilation {dilation} exceeds the axis length"
        )
    if stride > kernel:
        raise ValueError(f"{family}: axis {axis.position}: stride {stride} exceeds kernel {kernel}")
    return _Window(kernel, stride, dilation, c)


def _natten_axis(b: CascadeBuilder, axis: _Axis, w: _Window) -> str:
    """Declare the lets of one axis's window and return its predicate.

    Dilation d splits the axis into d interleaved groups; the window is computed on the
    query's group (position ``i``, group length ``L_g``) and a key must be in that group.
    With d == 1 the group is the axis itself, so the group lets vanish.
    """
    sfx, q, key, k, s, d = axis.suffix, axis.query, axis.key, w.kernel, w.stride, w.dilation
    if d == 1:
        pos, glen, key_pos, same_group = q, axis.length, key, ""
    else:
        b.let(f"group{sfx}", f"{q} % {d}")
        b.let(f"pos{sfx}", f"{q} // {d}")
        b.let(f"glen{sfx}", f"({axis.length} - group{sfx} + {d - 1}) // {d}")
        pos, glen, key_pos = f"pos{sfx}", f"glen{sfx}", f"{key} // {d}"
        same_group = f"{key} % {d} == group{sfx} and "
    # The leader is the query whose window this query shares; with s == 1 it is the query
    # itself (min(i, L_g - 1) == i because i < L_g).
    lead = pos
    if s > 1:
        offset = s - 1 if w.causal else s // 2
        b.let(f"lead{sfx}", f"min({pos} // {s} * {s} + {offset}, {glen} - 1)")
        lead = f"lead{sfx}"
    start = f"start{sfx}"
    if w.causal:
        # end = min(i + 1, L_g) == i + 1 because i < L_g.
        b.let(start, f"max({_plus(lead, 1 - k)}, 0)")
        return f"{same_group}{start} <= {key_pos} and {key_pos} <= {pos}"
    left, right = k // 2, k - 1 - k // 2
    # Windows that would cross the end shift back inward: every query sees k keys.
    shift = _plus(f"{glen} - {lead}", -(right + 1))
    b.let(start, f"max({_plus(lead, -left)}, 0) + min({shift}, 0)")
    return f"{same_group}{start} <= {key_pos} and {key_pos} < {start} + {k}"


def neighborhood_attention(
    grid: tuple[int, ...],
    kernel: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    causal: bool | tuple[bool, ...] = False,
    *,
    scale: float | None = None,
) -> Cascade:
    """NATTEN neighborhood attention (NATTEN 0.21 semantics) as a masked softmax cascade.

    Args:
        grid: axis lengths, 1 to 3 ints; tokens are flattened row-major.
        kernel, stride, dilation, causal: one value for every axis or a tuple per axis.
            ``stride == 1`` is neighborhood attention, ``1 < stride < kernel`` strided
            sliding windows (GNA), ``stride == kernel`` blocked attention.
        scale: default score scale; the cascade's ``scale`` parameter defaults to
            ``1 / sqrt(E)`` when None.

    Each axis needs ``kernel * dilation <= length`` and ``stride <= kernel``, as in NATTEN.
    """
    family = "neighborhood_attention"
    axes = _axes(family, grid)
    n = len(axes)
    params = zip(
        axes,
        _per_axis(family, "kernel", kernel, n),
        _per_axis(family, "stride", stride, n),
        _per_axis(family, "dilation", dilation, n),
        _per_axis(family, "causal", causal, n),
        strict=True,
    )
    windows = [_natten_window(family, a, k, s, d, c) for a, k, s, d, c in params]
    b = _grid_builder(family, axes)
    mask = " and ".join(_natten_axis(b, a, w) for a, w in zip(axes, windows, strict=True))
    return _softmax_tail(b, mask, scale)


# --------------------------------------------------------------------------------------
# HaloNet and MaxViT
# --------------------------------------------------------------------------------------


def halo_attention(
    grid: tuple[int, ...],
    block: int | tuple[int, ...],
    halo: int | tuple[int, ...],
    *,
    scale: float | None = None,
) -> Cascade:
    """HaloNet blocked local attention as a masked softmax cascade.

    Per axis the query at ``x`` lies in block ``x // block`` and attends the keys
    ``x'`` with ``bx * block - halo <= x' < bx * block + block + halo``; keys past the grid
    edge simply do not exist (no padding tokens). ``block``/``halo``: int or tuple per axis.
    """
    family = "halo_attention"
    axes = _axes(family, grid)
    blocks = _per_axis(family, "block", block, len(axes))
    halos = _per_axis(family, "halo", halo, len(axes))
    b = _grid_builder(family, axes)
    terms = []
    for axis, blk, hal in zip(axes, blocks, halos, strict=True):
        blk = _check_int(family, axis, "block", blk, 1)
        hal = _check_int(family, axis, "halo", hal, 0)
        start = f"start{axis.suffix}"
        b.let(start, _plus(f"{axis.query} // {blk} * {blk}", -hal))
        terms.append(f"{start} <= {axis.key} and {axis.key} < {start} + {blk + 2 * hal}")
    return _softmax_tail(b, " and ".join(terms), scale)


def maxvit_attention(
    grid: tuple[int, ...],
    size: int | tuple[int, ...],
    mode: str,
    *,
    position_bias: bool = False,
    scale: float | None = None,
) -> Cascade:
    """MaxViT block or grid attention as a masked softmax cascade.

    ``mode="block"``: non-overlapping windows of ``size`` tokens per axis,
    ``x // size == x' // size``. ``mode="grid"``: ``size`` tokens per axis spread
    ``L // size`` apart, ``x % (L // size) == x' % (L // size)`` (dilated blocked
    attention). Every axis length must be divisible by its ``size``.

    With ``position_bias`` the cascade reads an input ``RB[h, i, j]``: the bias the model
    gathers from its relative-position table for the query at window position ``i`` and the
    key at ``j``, positions flattened row-major inside the ``size`` window: per axis
    ``x % size`` for a block, ``x // (L // size)`` for a grid (timm's ``grid_partition``
    puts the token ``(gy * L // size + sy)`` at position ``gy`` of window ``sy``).
    """
    family = "maxvit_attention"
    if mode not in ("block", "grid"):
        raise ValueError(f"{family}: mode must be 'block' or 'grid', got {mode!r}")
    axes = _axes(family, grid)
    sizes = _per_axis(family, "size", size, len(axes))
    windows = []
    for axis, sz in zip(axes, sizes, strict=True):
        sz = _check_int(family, axis, "size", sz, 1)
        if axis.extent % sz != 0:
            raise ValueError(
                f"{family}: axis {axis.position} (length {axis.extent}) is not divisible "
                f"by size {sz}"
            )
        q, key = axis.query, axis.key
        if mode == "block":
            windows.append((f"{q} // {sz}", f"{key} // {sz}", f"{q} % {sz}", f"{key} % {sz}", sz))
        else:
            step = f"({axis.length} // {sz})"
            windows.append((f"{q} % {step}", f"{key} % {step}", f"{q} // {step}",
                            f"{key} // {step}", sz))  # fmt: skip
    return _window_cascade(_grid_builder(family, axes), windows, position_bias, scale)


# --------------------------------------------------------------------------------------
# Swin windows, read on the original token grid
# --------------------------------------------------------------------------------------


def window_attention(
    grid: tuple[int, ...],
    window: int | tuple[int, ...],
    shift: int | tuple[int, ...] = 0,
    *,
    position_bias: bool = False,
    scale: float | None = None,
) -> Cascade:
    """Swin (shifted) window attention on the original token grid, as a masked cascade.

    Swin rolls the grid by ``-shift``, cuts it into ``window`` blocks and masks pairs from
    different regions of the rolled grid. On the original grid that is non-cyclic windows
    offset by ``shift``: per axis the query at ``x`` and the key at ``x'`` attend iff
    ``(x + w - s) // w == (x' + w - s) // w`` (a partial window at each end). ``shift == 0``
    is plain blocked windows (``x // w == x' // w``), MaxViT's block attention.

    With ``position_bias`` the cascade reads an input ``RB[h, i, j]``: the bias the model
    gathers from its relative-position table for the query at window position ``i`` and the
    key at ``j``, positions flattened row-major inside the rolled window,
    ``r = (x + w - s) % w`` per axis. Every axis length must be divisible by its window and
    ``0 <= shift < window``.
    """
    family = "window_attention"
    axes = _axes(family, grid)
    windows = _per_axis(family, "window", window, len(axes))
    shifts = _per_axis(family, "shift", shift, len(axes))
    per_axis = []
    for axis, size, offset in zip(axes, windows, shifts, strict=True):
        size = _check_int(family, axis, "window", size, 1)
        offset = _check_int(family, axis, "shift", offset, 0)
        if axis.extent % size != 0 or offset >= size:
            raise ValueError(
                f"{family}: axis {axis.position} (length {axis.extent}): needs a window "
                f"dividing the length and 0 <= shift < window, got window {size}, "
                f"shift {offset}"
            )
        q, key = _plus(axis.query, size - offset), _plus(axis.key, size - offset)
        if offset == 0:
            q, key = axis.query, axis.key
        else:
            q, key = f"({q})", f"({key})"
        per_axis.append(
            (f"{q} // {size}", f"{key} // {size}", f"{q} % {size}", f"{key} % {size}", size)
        )
    return _window_cascade(_grid_builder(family, axes), per_axis, position_bias, scale)


def _window_cascade(
    b: CascadeBuilder,
    per_axis: list[tuple[str, str, str, str, int]],
    position_bias: bool,
    scale: float | None,
) -> Cascade:
    """The window cascade from each axis's (query window, key window, query position, key
    position, window size): a pair attends iff its windows agree on every axis; with
    ``position_bias`` the flat positions index ``RB``."""
    if position_bias:
        b.input("RB[h, i, j]")
    terms, query_pos, key_pos = [], "", ""
    for q_window, k_window, q_inner, k_inner, size in per_axis:
        terms.append(f"{q_window} == {k_window}")
        query_pos = _flat_position(query_pos, q_inner, size)
        key_pos = _flat_position(key_pos, k_inner, size)
    if position_bias:
        b.let("pos_p", query_pos)
        b.let("pos_m", key_pos)
    return _window_tail(b, " and ".join(terms), position_bias, scale)


def _flat_position(outer: str, inner: str, size: int) -> str:
    """Row-major position inside a window: ``outer * size + inner``."""
    return inner if not outer else f"({outer}) * {size} + {inner}"


def _window_tail(b: CascadeBuilder, mask: str, position_bias: bool, scale: float | None) -> Cascade:
    """The masked softmax tail with the window's relative-position bias added to the scores."""
    if not position_bias:
        return _softmax_tail(b, mask, scale)
    b.param("scale", "float", "1 / sqrt(E)" if scale is None else repr(float(scale)))
    b.stmt(f"QK[b, h, m, p] = Q[b, h, p, e] * K[b, h, m, e] * scale :: sum(e) if {mask}")
    b.stmt("S[b, h, m, p] = QK[b, h, m, p] + RB[h, pos_p, pos_m]")
    b.stmt("GM[b, h, p] = S[b, h, m, p] :: max(m)")
    b.stmt("SN[b, h, m, p] = exp(S[b, h, m, p] - GM[b, h, p])")
    b.stmt("SD[b, h, p] = SN[b, h, m, p] :: sum(m)")
    b.stmt("A[b, h, m, p] = SN[b, h, m, p] / SD[b, h, p]")
    b.stmt("AV[b, h, p, f] = A[b, h, m, p] * V[b, h, m, f] :: sum(m)")
    b.output("AV")
    return b.build()
