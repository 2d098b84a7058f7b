"""The native C++ kernel of the torch target against the float64 reference executor.

Every block-sparse family in float32 (the kernel's dtype) runs natively where its score map
is a scale; the cases cover ragged tiles, head dims that are not multiples of the vector
width (E 16/F 12, E 8/F 8, E 80/F 40), GQA/MQA, per-batch documents, rows that see no key,
key sets longer than one online-softmax chunk (512 keys) and low-precision inputs.
Negative tests: the kernel is switched off by ``EINSCADE_NATIVE=0``, a build failure names
the compiler's error, and score maps it cannot apply stay on the matmul kernel.
"""

from __future__ import annotations

import platform

import pytest
import torch

from codegen.torch_lowering.cases import CASES, inputs
from einscade.codegen.native import attend, library
from einscade.codegen.reference import reference
from einscade.codegen.torch_lowering import TorchProgram
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention

pytestmark = pytest.mark.skipif(library.compiler() is None, reason="no C++ compiler here")

TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
SCORE_MAPS = {"softcap_bias_alibi"}  # not a scale: the matmul kernel runs these


def _check(cascade, tensors, dtype=torch.float32, **options) -> TorchProgram:  # type: ignore[no-untyped-def]
    program = TorchProgram(cascade, **options)
    out = program(**tensors)
    expected = reference(cascade, dtype=torch.float64, **tensors)
    assert out.dtype == dtype and out.shape == expected.shape
    assert not torch.isnan(out).any()
    error = (out.double() - expected).abs().max().item()
    assert error <= TOLERANCE[dtype] * max(1.0, expected.abs().max().item()), error
    return program


@pytest.mark.parametrize("name", sorted(set(CASES) - SCORE_MAPS))
def test_family_runs_natively_and_matches_reference(name: str) -> None:
    build, sizes = CASES[name]
    cascade = build()
    program = _check(cascade, inputs(cascade, sizes, torch.float32))
    assert program.stats.kernel == "native", program.kernel_reason


@pytest.mark.parametrize("dims", [(80, 40), (64, 64), (8, 8), (33, 128)])
def test_head_dims_beyond_the_vector_width(dims: tuple[int, int]) -> None:
    e, f = dims
    cascade = neighborhood_attention(grid=(13, 11), kernel=(5, 3))
    tensors = inputs(cascade, {"P": 143, "E": e, "F": f}, torch.float32)
    assert _check(cascade, tensors).stats.kernel == "native"


def test_key_sets_longer_than_one_chunk_use_the_online_softmax() -> None:
    cascade = softmax_attention(causal=True, window=(700, 0), sinks=2)
    tensors = inputs(cascade, {"P": 1500, "B": 1, "H": 2, "E": 16, "F": 16}, torch.float32)
    program = _check(cascade, tensors)
    plan = next(iter(program.plans.values()))
    assert max(g.key_count for g in plan.groups) > 512  # more than one chunk per tile


def test_rows_that_see_no_key_are_zero() -> None:
    cascade = CASES["causal_bottom_right"][0]()
    tensors = inputs(cascade, {"P": 200, "M": 70}, torch.float32)
    out = _check(cascade, tensors)(**tensors)
    assert torch.equal(out[:, :, :130], torch.zeros_like(out[:, :, :130]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_run_natively_in_float32(dtype: torch.dtype) -> None:
    cascade = CASES["gqa"][0]()
    program = _check(cascade, inputs(cascade, CASES["gqa"][1], dtype), dtype)
    assert program.stats.kernel == "native"


@pytest.mark.parametrize("workers", [1, 3])
def test_thread_counts_agree(workers: int) -> None:
    cascade = CASES["na2d_dilated"][0]()
    _check(cascade, inputs(cascade, CASES["na2d_dilated"][1], torch.float32), workers=workers)


def test_float64_and_score_maps_stay_on_the_matmul_kernel() -> None:
    cascade = CASES["softcap_bias_alibi"][0]()
    program = TorchProgram(cascade)
    assert program.kernel == "matmul" and "not a scale" in program.kernel_reason
    plain = CASES["causal"][0]()
    program = TorchProgram(plain)
    program(**inputs(plain, CASES["causal"][1], torch.float64))
    assert program.kernel == "native" and program.stats.kernel == "matmul"


def test_switched_off_by_the_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EINSCADE_NATIVE", "0")
    monkeypatch.setattr(library, "_STATE", {})
    program = TorchProgram(CASES["causal"][0]())
    assert program.kernel == "matmul"
    assert "EINSCADE_NATIVE=0" in program.kernel_reason


def test_a_failed_build_names_the_compiler_error(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "attend.cpp"
    broken.write_text("int einscade_attend( {\n")
    monkeypatch.setattr(library, "SOURCE", broken)
    monkeypatch.setenv("EINSCADE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=r"failed:\n.*attend\.cpp:1"):
        library.build()
    monkeypatch.setattr(library, "_STATE", {})
    program = TorchProgram(CASES["causal"][0]())
    assert program.kernel == "matmul"
    assert "native kernel unavailable" in program.kernel_reason


def test_the_build_is_cached_by_source(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EINSCADE_CACHE_DIR", str(tmp_path))
    first = library.build()
    assert first.exists() and first.is_relative_to(tmp_path / "native")
    stamp = first.stat().st_mtime_ns
    assert library.build() == first and first.stat().st_mtime_ns == stamp


def test_default_kernel_and_bad_kernel_name() -> None:
    cascade = CASES["causal"][0]()
    assert TorchProgram(cascade).kernel == "native"
    assert TorchProgram(cascade, kernel="matmul").kernel_reason.startswith("kernel='matmul'")
    with pytest.raises(ValueError, match="kernel must be one of"):
        TorchProgram(cascade, kernel="fused")


def test_the_avx2_build_is_exact_too(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Machines without AVX-512 get 8-float vectors and a narrower micro-kernel."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("an x86 build variant")
    monkeypatch.setenv("EINSCADE_CACHE_DIR", str(tmp_path))
    flags = tuple("-march=haswell" if f == "-march=native" else f for f in library.FLAGS)
    avx2 = library.open_library(library.build(flags=flags))
    cascade = CASES["documents_causal_gqa"][0]()
    tensors = inputs(cascade, {**CASES["documents_causal_gqa"][1], "E": 40, "F": 24},
                     torch.float32)  # fmt: skip
    expected = TorchProgram(cascade, kernel="matmul")(**tensors)
    monkeypatch.setattr(attend, "load", lambda: avx2)
    program = TorchProgram(cascade)
    out = program(**tensors)
    assert program.stats.kernel == "native"
    assert (out - expected).abs().max().item() < 2e-5


def test_the_kernel_refuses_operands_it_cannot_read() -> None:
    cascade = CASES["causal"][0]()
    tensors = inputs(cascade, CASES["causal"][1], torch.float32)
    program = TorchProgram(cascade)
    program(**tensors)
    (plan,) = program.plans.values()
    q = torch.zeros(2, 1, 200, 16)
    k, v, out = torch.zeros(2, 200, 16), torch.zeros(2, 200, 12), torch.zeros(2, 1, 200, 12)
    with pytest.raises(ValueError, match="k must be contiguous float32, got torch.float64"):
        attend.attend_plan(plan, q, k.double(), v, out, 1.0, 1)
    with pytest.raises(ValueError, match="out must be contiguous float32"):
        attend.attend_plan(plan, q, k, v, out.transpose(2, 3), 1.0, 1)
