"""The torch target against the float64 reference executor, family by family.

Every case has ragged tiles (grid and sequence lengths that the tiles do not divide);
several have GQA/MQA heads, rows that see no key (bottom-right causal with more queries
than keys: 0, not NaN), documents that differ per batch row (one plan per row), score
maps beyond a scale (soft-capping, a bias tensor, ALiBi). Low-precision inputs are checked
at their own tolerance; chunking, worker threads and other layouts must not change results.
"""

from __future__ import annotations

import pytest
import torch

from codegen.torch_lowering.cases import CASES, inputs
from einscade.codegen.reference import reference
from einscade.codegen.torch_lowering import TorchProgram
from einscade.frontends.softmax import softmax_attention

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _check(program: TorchProgram, cascade, tensors, dtype, **params) -> torch.Tensor:  # type: ignore[no-untyped-def]
    out = program(**tensors, **params)
    expected = reference(cascade, dtype=torch.float64, **tensors, **params)
    assert out.dtype == dtype and out.shape == expected.shape
    assert not torch.isnan(out).any()
    error = (out.double() - expected).abs().max().item()
    assert error <= TOLERANCE[dtype] * max(1.0, expected.abs().max().item()), error
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_matches_reference_in_float64(name: str) -> None:
    build, sizes = CASES[name]
    cascade = build()
    program = TorchProgram(cascade)
    assert program.block_sparse, program.reason
    _check(program, cascade, inputs(cascade, sizes), torch.float64)
    stats = program.stats
    assert 0 < stats.layout_elements <= stats.computed_elements <= stats.dense_elements


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["na2d", "sliding_window_flat", "gqa", "halo", "blocked3d"])
def test_low_precision_inputs(name: str, dtype: torch.dtype) -> None:
    build, sizes = CASES[name]
    cascade = build()
    _check(TorchProgram(cascade), cascade, inputs(cascade, sizes, dtype), dtype)


def test_rows_that_see_no_key_are_zero() -> None:
    build, sizes = CASES["causal_bottom_right"]
    cascade = build()
    tensors = inputs(cascade, {**sizes, "P": 200, "M": 70})
    out = _check(TorchProgram(cascade), cascade, tensors, torch.float64)
    assert torch.equal(out[:, :, :130], torch.zeros_like(out[:, :, :130]))


@pytest.mark.parametrize(
    "options",
    [{"budget": 700, "workers": 1}, {"budget": 700, "workers": 3},
     {"key_mode": "grid", "query_tile": (4, 4)}, {"query_tile": (3, 5), "pad": 4}],
)  # fmt: skip
def test_chunks_workers_and_layouts_agree(options: dict[str, object]) -> None:
    for name in ("na2d", "halo"):
        build, sizes = CASES[name]
        cascade = build()
        _check(TorchProgram(cascade, **options), cascade, inputs(cascade, sizes), torch.float64)


@pytest.mark.parametrize("options", [{"budget": 3000, "workers": 2}, {"query_tile": (32,)}])
def test_one_dimensional_chunks_and_tiles_agree(options: dict[str, object]) -> None:
    for name in ("sliding_window_flat", "sliding_window_sinks", "gqa", "softcap_bias_alibi"):
        build, sizes = CASES[name]
        cascade = build()
        _check(TorchProgram(cascade, **options), cascade, inputs(cascade, sizes), torch.float64)


def test_run_time_parameters_get_their_own_plan() -> None:
    cascade = softmax_attention(causal=True, window=(40, 0), sinks=2)
    program = TorchProgram(cascade)
    tensors = inputs(cascade, {"P": 130})
    _check(program, cascade, tensors, torch.float64)
    _check(program, cascade, tensors, torch.float64, window_left=7, sinks=0, scale=0.3)
    _check(program, cascade, tensors, torch.float64, scale=0.9)  # same mask: plan reused
    assert len(program.plans) == 2


def test_strided_inputs_and_broadcast_batch() -> None:
    cascade = softmax_attention(causal=True)
    tensors = inputs(cascade, {"P": 90})
    tensors["Q"] = tensors["Q"].transpose(2, 3).contiguous().transpose(2, 3)  # strided view
    tensors["K"] = tensors["K"][:1]  # batch dim of 1 broadcasts against Q's 2
    tensors["V"] = tensors["V"][:1]
    _check(TorchProgram(cascade), cascade, tensors, torch.float64)


@pytest.mark.parametrize("name", ["linear", "sigmoid", "softplus", "agent", "triplet"])
def test_other_families_fall_back_to_exact_dense_execution(name: str) -> None:
    from small_builtins import small, small_inputs

    cascade = small(name)
    program = TorchProgram(cascade)
    assert not program.block_sparse and program.reason
    tensors = small_inputs(cascade)
    with pytest.warns(RuntimeWarning, match="runs densely"):
        out = program(**tensors)
    assert program.stats.dense_fallback
    expected = reference(cascade, dtype=torch.float64, **tensors)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_bad_arguments_name_the_problem() -> None:
    cascade = softmax_attention()
    with pytest.raises(TypeError, match="unknown option 'tile'"):
        TorchProgram(cascade, tile=3)
    tensors = inputs(cascade, {"P": 10})
    with pytest.raises(TypeError, match="no input tensor 'X'"):
        TorchProgram(cascade)(**tensors, X=tensors["Q"])
    with pytest.raises(Exception, match="missing input tensor 'V'"):
        TorchProgram(cascade)(Q=tensors["Q"], K=tensors["K"])
