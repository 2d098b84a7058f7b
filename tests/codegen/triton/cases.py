"""Small cascades and inputs for the Triton kernel tests (each interpreter run well under 1 s).

Shapes are ragged on purpose: 20 tokens against 16-row tiles leave a partial tile, and
head dims 24 and 20 are not powers of two (padded to 32).
"""

from pathlib import Path

import torch

from einscade.codegen.reference import reference
from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.frontends.variants import linear_attention, sigmoid_attention, softplus_attention
from einscade.ir import load

EXAMPLES = Path(__file__).parents[3] / "examples"

EXTENTS = {"b": 1, "h": 2, "hk": 2, "p": 20, "m": 20, "e": 24, "f": 20}
BLOCK = {"block_p": 16, "block_m": 16}
NA_GRID = (5, 6)  # 4 x 4 boxes overhang both axes
NA_BLOCK = {"block_p": (4, 4), "block_m": 16}

# name -> (cascade builder, extents overriding EXTENTS, build options)
CASES = {
    "softmax": (lambda: softmax_attention(), {}, BLOCK),
    "causal": (lambda: softmax_attention(causal=True), {}, BLOCK),
    "causal_bottom_right": (
        lambda: softmax_attention(causal="bottom_right"),
        {"p": 13, "m": 29},
        BLOCK,
    ),
    "causal_bottom_right_empty_rows": (
        lambda: softmax_attention(causal="bottom_right"),
        {"p": 23, "m": 9},
        BLOCK,
    ),
    "gqa": (lambda: softmax_attention(causal=True, kv_heads=True), {"h": 4, "hk": 2}, BLOCK),
    "window_sinks": (lambda: softmax_attention(causal=True, window=(5, 0), sinks=2), {}, BLOCK),
    "documents": (lambda: softmax_attention(documents=True, causal=True), {}, BLOCK),
    "softcap_alibi_bias": (
        lambda: softmax_attention(softcap=5.0, alibi=True, bias=True),
        {"b": 2},
        BLOCK,
    ),
    "neighborhood_2d": (
        lambda: neighborhood_attention(grid=NA_GRID, kernel=(3, 3)),
        {"p": 30, "m": 30},
        NA_BLOCK,
    ),
    "sigmoid_causal": (lambda: sigmoid_attention(causal=True), {}, BLOCK),
    "softplus": (lambda: softplus_attention(), {}, BLOCK),
}

# More families, fp32 only: already fused (FuseMax's 1-pass example, no batch ranks),
# 1-D dilated, 3-D boxes, causal + strided windows, HaloNet, MaxViT, linear attention.
MORE_CASES = {
    "fusemax_1pass": (lambda: load(EXAMPLES / "attention_1pass.ecas"), {"m": 27}, BLOCK),
    "neighborhood_1d_dilated": (
        lambda: neighborhood_attention(grid=(40,), kernel=(5,), dilation=2),
        {"p": 40, "m": 40}, BLOCK,
    ),
    "neighborhood_3d": (
        lambda: neighborhood_attention(grid=(3, 4, 4), kernel=(3, 3, 3)),
        {"p": 48, "m": 48}, {"block_p": (2, 2, 4), "block_m": 16},
    ),
    "neighborhood_2d_causal_strided": (
        lambda: neighborhood_attention(grid=(6, 5), kernel=(3, 3), stride=(2, 1),
                                       causal=(True, False)),
        {"p": 30, "m": 30}, NA_BLOCK,
    ),
    "halo": (lambda: halo_attention(grid=(6, 6), block=3, halo=1), {"p": 36, "m": 36}, NA_BLOCK),
    "maxvit_grid": (
        lambda: maxvit_attention(grid=(6, 6), size=3, mode="grid"), {"p": 36, "m": 36}, NA_BLOCK
    ),
    "linear": (lambda: linear_attention(), {}, BLOCK),
}  # fmt: skip

# Absolute and relative tolerances against the float64 reference, by storage dtype:
# fp16/bf16 round P before the P @ V product and round the output.
TOLERANCE = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def make_inputs(cascade, extents=None, dtype=torch.float32, seed=0):
    """Random inputs for ``cascade``: values ~N(0, 1), documents of 7 tokens, slopes in
    (0, 1), a bias broadcast over the batch ([1, H, P, M])."""
    ext = {**EXTENTS, **(extents or {})}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for decl in cascade.inputs:
        shape = [ext[r] for r in decl.ranks]
        if decl.name == "doc":
            tensors["doc"] = (torch.arange(shape[1]) // 7).expand(*shape).clone()
        elif decl.name == "slopes":
            tensors["slopes"] = torch.rand(shape, generator=g).to(dtype)
        elif decl.name == "bias":
            tensors["bias"] = torch.randn([1, *shape[1:]], generator=g).to(dtype)
        else:
            tensors[decl.name] = torch.randn(shape, generator=g).to(dtype)
    return tensors


def assert_matches_reference(cascade, output, tensors, dtype, **params):
    expected = reference(cascade, dtype=torch.float64, **tensors, **params)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(output.double(), expected, atol=atol, rtol=rtol)
