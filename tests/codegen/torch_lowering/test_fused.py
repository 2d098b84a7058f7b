"""The fused kernel (torch's CPU flash attention per chunk) against the reference executor.

It runs where the score map is a scale; the cases cover every way of getting tiles (flat
window over all heads, windowed views, gathers), per-tile and shared masks, masks after a
prefix of full key tiles (sinks), ragged tails, GQA/MQA, rows that see no key (0, not
NaN) and low-precision inputs. Score maps beyond a scale must keep the three-step kernel.
"""

from __future__ import annotations

import pytest
import torch

from codegen.torch_lowering.cases import CASES, inputs
from codegen.torch_lowering.test_families import TOLERANCE, _check
from einscade.codegen.torch_lowering import TorchProgram
from einscade.codegen.torch_lowering.execute import Kernel
from einscade.codegen.torch_lowering.fused import attend_fused
from einscade.codegen.torch_lowering.recognize import fused_kernel

FUSED_CASES = [
    "na2d", "na2d_strided_causal", "blocked3d", "halo", "maxvit_grid_permuted",
    "causal", "causal_bottom_right", "sliding_window_sinks", "sliding_window_flat",
    "gqa", "mqa", "documents_causal_gqa", "cross",
]  # fmt: skip


@pytest.mark.parametrize("name", FUSED_CASES)
def test_fused_kernel_matches_reference(name: str) -> None:
    build, sizes = CASES[name]
    cascade = build()
    program = TorchProgram(cascade, kernel="fused")
    assert program.fused, program.kernel_reason
    _check(program, cascade, inputs(cascade, sizes), torch.float64)
    assert program.stats.kernel == "fused"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_kernel_low_precision(dtype: torch.dtype) -> None:
    for name in ("na2d", "gqa", "sliding_window_flat"):
        build, sizes = CASES[name]
        cascade = build()
        tensors = inputs(cascade, sizes, dtype)
        _check(TorchProgram(cascade, kernel="fused"), cascade, tensors, dtype)


def test_fused_rows_that_see_no_key_are_zero() -> None:
    build, sizes = CASES["causal_bottom_right"]
    cascade = build()
    tensors = inputs(cascade, {**sizes, "P": 200, "M": 70})
    out = _check(TorchProgram(cascade, kernel="fused", budget=900), cascade, tensors,
                 torch.float64)  # fmt: skip
    assert torch.equal(out[:, :, :130], torch.zeros_like(out[:, :, :130]))


@pytest.mark.parametrize("options", [{"budget": 700, "workers": 3}, {"query_tile": (3, 5)}])
def test_fused_chunks_workers_and_layouts_agree(options: dict[str, object]) -> None:
    names = ("na2d", "halo", "gqa") if "budget" in options else ("na2d", "halo")  # 2-D tiles
    for name in names:
        build, sizes = CASES[name]
        cascade = build()
        program = TorchProgram(cascade, kernel="fused", **options)
        _check(program, cascade, inputs(cascade, sizes), torch.float64)


def test_score_maps_beyond_a_scale_keep_the_three_step_kernel() -> None:
    build, sizes = CASES["softcap_bias_alibi"]
    cascade = build()
    program = TorchProgram(cascade, kernel="fused")
    assert not program.fused and "not a scale" in program.kernel_reason
    _check(program, cascade, inputs(cascade, sizes), torch.float64)
    assert program.stats.kernel == "matmul"
    assert not fused_kernel(program.form)[0]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fused kernel applies no score map"):
        Kernel(1.0, lambda scores, chunk: scores, fused=True)


def test_default_kernel_and_bad_kernel_name() -> None:
    cascade = CASES["causal"][0]()
    assert not TorchProgram(cascade).fused
    assert TorchProgram(cascade).kernel_reason.startswith("kernel='auto'")
    with pytest.raises(ValueError, match="kernel must be one of"):
        TorchProgram(cascade, kernel="flash")


def _manual(q, k, v, bias, scale):  # type: ignore[no-untyped-def]
    scores = scale * q @ k.transpose(-1, -2) + bias
    weights = torch.softmax(scores, -1).nan_to_num(0.0)  # a row that sees nothing: 0
    return weights @ v


def test_attend_fused_per_tile_masks_views_and_empty_rows() -> None:
    g = torch.Generator().manual_seed(1)
    heads, tiles, rows, keys, dim = 2, 3, 5, 7, 4
    flat = torch.randn(40, dim, generator=g, dtype=torch.float64)
    # overlapping windows of one tensor, 3 tokens apart, as the windowed path passes them
    windows = flat.as_strided((heads * tiles, keys, dim), (3 * dim, dim, 1))
    q = torch.randn(heads * tiles, rows, dim, generator=g, dtype=torch.float64)
    allowed = torch.rand(tiles, rows, keys, generator=g) < 0.6
    allowed[1, 2] = False  # a row of tile 1 sees no key
    bias = torch.zeros(tiles, rows, keys, dtype=torch.float64).masked_fill(~allowed, -torch.inf)
    out = torch.empty(heads * tiles, rows, dim, dtype=torch.float64)
    attend_fused(q, windows, windows, out, bias, 0.5)
    expected = _manual(q.view(heads, tiles, rows, dim), windows.view(heads, tiles, keys, dim),
                       windows.view(heads, tiles, keys, dim), bias, 0.5)  # fmt: skip
    tolerance = TOLERANCE[torch.float64]
    assert (out.view_as(expected) - expected).abs().max() < tolerance
    empty_row = out.view(heads, tiles, rows, dim)[:, 1, 2]
    assert torch.equal(empty_row, torch.zeros_like(empty_row))
    shared = bias[:1]
    attend_fused(q, windows, windows, out, shared, 0.5)
    expected = _manual(q, windows, windows, shared, 0.5)
    assert (out - expected).abs().max() < tolerance
