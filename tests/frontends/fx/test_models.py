"""Real models from tiny configs (random weights, no downloads) compiled with the backend:
output equal to eager, every attention captured, as the expected cascade."""

from __future__ import annotations

import pytest
import torch

from einscade.frontends.fx import record_sites
from tests.frontends.fx import models

BERT = "softmax_attention(bias, scale=0.25)"  # the padding mask comes from an input
CAUSAL = "softmax_attention(causal, scale=0.25)"  # the mask is built from arange: constant
LLAMA = "softmax_attention(causal, kv_heads, scale=0.353553)"
MISTRAL = "softmax_attention(causal_window(left=3), kv_heads, scale=0.353553)"
VIT = "softmax_attention(scale=0.25)"
SWIN = "softmax_attention(bias, scale=0.353553)"  # per window: relative-position bias (+ mask)
# Swin lifted onto its 8 x 8 token grid: plain windows, then windows shifted by 2.
SWIN_GRID = [
    "window_attention(grid=(8, 8), window=(4, 4), bias, scale=0.353553)",
    "window_attention(grid=(8, 8), window=(4, 4), shift=(2, 2), bias, scale=0.353553)",
]

# (builder, attn_implementation, the summary of each of its sites)
TRANSFORMERS = {
    "bert-eager": (models.bert, "eager", [BERT] * 2),
    "bert-sdpa": (models.bert, "sdpa", [BERT] * 2),
    "gpt2-eager": (models.gpt2, "eager", [CAUSAL] * 2),
    "gpt2-sdpa": (models.gpt2, "sdpa", [CAUSAL] * 2),
    "llama-eager": (models.llama, "eager", [LLAMA] * 2),
    "llama-sdpa": (models.llama, "sdpa", [LLAMA] * 2),
    "mistral-eager": (models.mistral, "eager", [MISTRAL] * 2),
    "mistral-sdpa": (models.mistral, "sdpa", [MISTRAL] * 2),
    "vit-eager": (models.vit, "eager", [VIT] * 2),
    "vit-sdpa": (models.vit, "sdpa", [VIT] * 2),
}
# The other implementation of each model is in the default run.
_SLOW = {"bert-sdpa", "gpt2-sdpa", "llama-eager", "mistral-eager", "vit-eager"}


def _check(example: models.Example, expected: list[str], target: str = "auto") -> list:
    torch._dynamo.reset()
    options = {"fallback": "eager", "target": target}
    compiled = torch.compile(example.model, backend="einscade", options=options)
    with torch.no_grad(), record_sites() as records:
        got = example.run(compiled)
        want = example.run()
    assert [r.summary for r in records if r.captured] == expected, records
    assert all(r.captured for r in records), records
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return records


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if n in _SLOW else []) for n in TRANSFORMERS],
)
def test_transformers_model_is_captured_and_matches_eager(name):
    build, impl, expected = TRANSFORMERS[name]
    torch.manual_seed(0)
    records = _check(build(impl), expected)
    # Rotary embeddings combine computed tensors, but no window partition is behind them.
    assert not any("window layout" in r.reason for r in records), records


@pytest.mark.parametrize(
    ("impl", "target"),
    [
        ("eager", "torch"),
        pytest.param("sdpa", "torch", marks=pytest.mark.slow),
        pytest.param("eager", "reference", marks=pytest.mark.slow),
        ("sdpa", "reference"),
    ],
)
def test_swin_windows_are_lifted_onto_the_token_grid(impl, target):
    """Both Swin blocks become one window_attention cascade on the 8 x 8 grid: the window
    partition, the roll and the region mask are read as indices, the relative-position bias
    stays a gathered input."""
    torch.manual_seed(0)
    records = _check(models.swin(impl), SWIN_GRID, target)
    assert all("lifted onto the 8 x 8 token grid" in r.reason for r in records)
    assert all([d.name for d in r.cascade.inputs][-1] == "RB" for r in records)


@pytest.mark.slow  # another model: ~8 s
def test_padded_swin_stays_per_window():
    """A 6 x 6 grid is padded to 8 x 8 for 4 x 4 windows: the padded windows stay per
    window, with the reason."""
    torch.manual_seed(0)
    records = _check(models.swin("eager", image_size=24), [SWIN] * 2)
    assert all("pads the grid to a multiple of the window" in r.reason for r in records)


TIMM = {
    "vit": (
        "vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
        ["softmax_attention()"] * 2,
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16, "depths": (2,),
         "num_heads": (2,)},
        SWIN_GRID,  # lifted; timm adds the shifted mask (a float buffer) in a 5-D view
    ),
    "maxvit": (
        "maxvit_pico_rw_256",  # two stages (8 x 8, 4 x 4 tokens), each a block then a grid
        {"img_size": 32, "embed_dim": (16, 32), "depths": (1, 1), "block_type": ("M", "M"),
         "stem_width": 16, "transformer_dim_head": 8, "transformer_partition_ratio": 16},
        [f"{family}(grid={(n, n)}, {size}=(2, 2){mode}, bias)"
         for n in (8, 4)
         for family, size, mode in [("window_attention", "window", ""),
                                    ("maxvit_attention", "size", ", mode=grid")]],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_model_is_captured_and_matches_eager(name):
    arch, config, expected = TIMM[name]
    torch.manual_seed(0)
    records = _check(models.timm_model(arch, **config), expected)
    if expected is SWIN_GRID:
        assert all("lifted onto the 8 x 8 token grid" in r.reason for r in records)
    if name == "maxvit":  # timm keeps the windows as [windows, WH, WW, C]
        assert all("partition lifted onto the" in r.reason for r in records)
