"""Grid families of a constant mask: separable per-axis windows on the row-major token grid.

Each axis is fitted on its own (NATTEN kernel / stride / dilation / causal, HaloNet block /
halo), the plainest family fitting every axis is named (blocked, MaxViT grid, halo, NATTEN),
and the AND of the fitted axes is verified against the whole mask.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from einscade.frontends.mask_structure.common import (
    MaskStructure,
    Rows,
    first_true,
    last_true,
    matches,
    run_lengths,
    structure,
)

# Per-axis parameter search falls back to trying every stride / block only on short axes;
# longer axes rely on the candidates derived from the window starts alone.
_EXHAUSTIVE_AXIS = 128


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


def recognise_grid(attend: torch.Tensor, axes: tuple[int, ...]) -> MaskStructure | None:
    """Fit each axis separately, name the family, then verify the whole separable mask.

    Every fitted axis equals the axis read off the mask, so if the AND of the fitted axes
    is not the mask, no other family of separable windows can be either.
    """
    per_axis = _axis_matrices(attend, axes)
    named = _name_grid_family(axes, per_axis)
    if named is None:
        return None
    structure, mats = named
    return structure if matches(attend, _separable_rows(axes, mats)) else None


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
            return structure("blocked", {**grid, "window": kernel}, kwargs), mats
        if all(w and f.kernel * f.dilation == n for n, f, w in pairs):
            kwargs = {**grid, "size": kernel, "mode": "grid"}
            return structure("maxvit_grid", {**grid, "size": kernel}, kwargs), mats
    # Where NATTEN fits, searching every block size is wasted: NATTEN names it anyway.
    halos = [_fit_halo_axis(mat, exhaustive=natten is None) for mat in per_axis]
    if all(halos):
        block = tuple(h[0] for h in halos if h is not None)
        halo = tuple(h[1] for h in halos if h is not None)
        mats = [halo_axis_mask(*args) for args in zip(axes, block, halo, strict=True)]
        params = {**grid, "block": block, "halo": halo}
        return structure("halo", params, params), mats
    if natten is not None:
        per_axis_params = zip(_NattenAxis._fields, zip(*natten, strict=True), strict=True)
        params = {**grid, **dict(per_axis_params)}
        return structure("neighborhood", params, params), mats
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
    starts = first_true(mat)[::dilation] // dilation  # window starts of group 0
    derived = {s for s in run_lengths(starts) if s <= kernel} | {1, kernel}
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
    first = first_true(mat)
    rest = mat.clone()
    rest[torch.arange(mat.shape[0]), first] = False
    return int((first_true(rest) - first)[several].min())


def _fit_halo_axis(mat: torch.Tensor, *, exhaustive: bool) -> tuple[int, int] | None:
    """HaloNet (block, halo) of one axis: block from the runs of equal first/last keys,
    halo from how far the unclipped windows reach past their block."""
    length = mat.shape[0]
    if not bool(mat.diagonal().all()):
        return None
    first, last = first_true(mat), last_true(mat)
    derived = sorted(run_lengths(first) | run_lengths(last))
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
