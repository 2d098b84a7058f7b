"""Small cascades of every block-sparse family, with inputs, for the torch lowering tests.

Sizes are chosen so that tiles are ragged (grids and lengths not multiples of the tiles)
and several groups and views show up, yet the dense reference stays fast.
"""

from __future__ import annotations

import torch

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention

# name -> (cascade builder, sizes: B, H, HK, P, M, E, F)
CASES = {
    "na1d": (lambda: neighborhood_attention(grid=(150,), kernel=(21,)), {"P": 150}),
    "na2d": (lambda: neighborhood_attention(grid=(13, 11), kernel=(5, 3)), {"P": 143}),
    "na2d_dilated": (
        lambda: neighborhood_attention(grid=(20, 17), kernel=(3, 5), dilation=(2, 3)),
        {"P": 340},
    ),
    "na2d_strided_causal": (
        lambda: neighborhood_attention(
            grid=(20, 17), kernel=(5, 5), stride=(2, 3), causal=(True, False)
        ),
        {"P": 340},
    ),
    "na3d": (lambda: neighborhood_attention(grid=(5, 9, 7), kernel=(3, 5, 3)), {"P": 315}),
    "blocked3d": (
        lambda: neighborhood_attention(grid=(4, 8, 12), kernel=4, stride=4),
        {"P": 384},
    ),
    "halo": (lambda: halo_attention(grid=(19, 13), block=4, halo=2), {"P": 247}),
    "maxvit_block": (
        lambda: maxvit_attention(grid=(12, 15), size=(3, 5), mode="block"),
        {"P": 180},
    ),
    "maxvit_grid": (
        lambda: maxvit_attention(grid=(12, 15), size=(3, 5), mode="grid"),
        {"P": 180},
    ),
    "maxvit_grid_permuted": (  # the cost model tiles a permuted (folded) grid here
        lambda: maxvit_attention(grid=(28, 28), size=7, mode="grid"),
        {"P": 784, "B": 1, "E": 8, "F": 8},
    ),
    "softmax": (lambda: softmax_attention(), {"P": 100}),
    "cross": (lambda: softmax_attention(), {"P": 70, "M": 190}),
    "causal": (lambda: softmax_attention(causal=True), {"P": 200}),
    "causal_bottom_right": (
        lambda: softmax_attention(causal="bottom_right"),
        {"P": 70, "M": 200},
    ),
    "sliding_window_sinks": (
        lambda: softmax_attention(causal=True, window=(40, 0), sinks=3),
        {"P": 333},
    ),
    "sliding_window_flat": (
        lambda: softmax_attention(causal=True, window=(50, 0)),
        {"P": 256, "H": 3},
    ),
    "window": (lambda: softmax_attention(window=(10, 20)), {"P": 250}),
    "gqa": (lambda: softmax_attention(causal=True, kv_heads=True), {"H": 4, "HK": 2, "P": 150}),
    "mqa": (lambda: softmax_attention(causal=True, kv_heads=True), {"H": 4, "HK": 1, "P": 150}),
    "documents": (lambda: softmax_attention(documents=True), {"P": 150}),
    "documents_causal_gqa": (
        lambda: softmax_attention(documents=True, causal=True, kv_heads=True),
        {"H": 4, "HK": 2, "P": 150},
    ),
    "prefix_lm": (lambda: softmax_attention(prefix_lm=True), {"P": 150}),
    "softcap_bias_alibi": (
        lambda: softmax_attention(causal=True, softcap=5.0, bias=True, alibi=True),
        {"P": 150},
    ),
}

DEFAULTS = {"B": 2, "H": 2, "HK": None, "M": None, "E": 16, "F": 12}


def inputs(cascade, sizes: dict[str, int], dtype=torch.float64, seed: int = 0):  # type: ignore[no-untyped-def]
    """Q, K, V (and the lookups the cascade declares) at ``sizes``."""
    s = {**DEFAULTS, **sizes}
    heads_kv = s["HK"] or s["H"]
    keys = s["M"] or s["P"]
    g = torch.Generator().manual_seed(seed)
    b, h, p = s["B"], s["H"], s["P"]

    def randn(*shape):  # type: ignore[no-untyped-def]
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    tensors = {
        "Q": randn(b, h, p, s["E"]),
        "K": randn(b, heads_kv, keys, s["E"]),
        "V": randn(b, heads_kv, keys, s["F"]),
    }
    declared = {d.name for d in cascade.inputs}
    if "doc" in declared:  # different documents per batch row: one plan per row
        tensors["doc"] = torch.stack([
            torch.tensor([0] * 30 + [1] * 50 + [2] * (p - 80)),
            torch.tensor([0] * (p - 7) + [1] * 7),
        ])[:b]  # fmt: skip
    if "bias" in declared:
        tensors["bias"] = randn(1, h, p, keys)
    if "slopes" in declared:
        tensors["slopes"] = torch.rand(h, generator=g, dtype=torch.float64).to(dtype)
    if "prefix" in declared:
        tensors["prefix"] = torch.tensor([5, 17])[:b]
    return tensors
