"""The fused kernel: a chunk of tiles through torch's CPU flash attention.

When a cascade's score map is only a scale (``S = QK * scale``, plus the mask), each query
tile's output is ``softmax(scale * Q K^T + mask) V`` over the tile's key set, which is what
``F.scaled_dot_product_attention`` computes: batch = the chunk's tiles (and key heads),
``L`` = the tile's query rows (the query heads of a GQA group stacked), ``S`` = the tile's
keys. On CPU it runs the flash-attention kernel: scores stay in cache blocks and are never
written out, and there is no separate softmax pass.

The mask is an additive bias (0 or -inf). A row whose keys are all masked comes out as 0
(torch >= 2.5 returns 0 there, not NaN), as the cascade's semantics require; the executor
also zeroes such rows itself (``Plan.dead``). Tiles may be strided views (overlapping key
windows): the kernel reads through strides, only the head dimension must be contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attend_fused(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    out: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
) -> None:
    """``out = softmax(scale * Q K^T + bias) V`` per tile.

    ``queries [count, rows, E]``, ``keys [count, Lk, E]``, ``values [count, Lk, F]`` and
    ``out [count, rows, F]`` hold ``count`` tiles (key head major when the chunk spans
    several key heads). ``bias``: ``[1, rows, Lk]`` shared by every tile, ``[T, rows, Lk]``
    for the chunk's ``T`` tiles (repeated over ``count / T`` key heads), or None."""
    count = queries.shape[0]
    tiles = 1 if bias is None or bias.shape[0] == 1 else bias.shape[0]
    outer, inner = (count // tiles, tiles) if tiles > 1 else (1, count)
    mask = None if bias is None else bias.unsqueeze(0)
    result = F.scaled_dot_product_attention(
        queries.unflatten(0, (outer, inner)),
        keys.unflatten(0, (outer, inner)),
        values.unflatten(0, (outer, inner)),
        attn_mask=mask,
        scale=scale,
    )
    out.copy_(result.view(out.shape))
