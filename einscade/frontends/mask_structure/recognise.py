"""The entry points: :func:`recognise_mask` names a constant mask's family, :func:`split_bias`
separates an additive float tensor into its mask part and a finite bias."""

from __future__ import annotations

import math

import torch

from einscade.frontends.mask_structure.common import (
    MASKED_AT,
    SAMPLE_ROWS,
    MaskStructure,
    spread,
    structure,
)
from einscade.frontends.mask_structure.grid import recognise_grid
from einscade.frontends.mask_structure.sequence import recognise_band, recognise_documents


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
    if bool(attend[spread(attend.shape[0], SAMPLE_ROWS)].all()) and bool(attend.all()):
        return structure("full", {}, {})
    found = recognise_band(attend) or recognise_documents(attend)
    if found is None and axes is not None and len(axes) <= 3:
        found = recognise_grid(attend, axes)
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
