"""Generated kernels run under Triton's interpreter and match the float64 reference."""

import dataclasses

import pytest
import torch

from einscade.codegen.reference import reference
from einscade.codegen.triton import KernelError, build_kernel
from einscade.frontends.softmax import softmax_attention
from einscade.ir import BindError, loads
from tests.codegen.triton.cases import (
    BLOCK,
    CASES,
    MORE_CASES,
    assert_matches_reference,
    make_inputs,
)

ALL_CASES = {**CASES, **MORE_CASES}

# Rows with no visible key have log-sum-exp log(0) = -inf; numpy says so on stderr.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log")

HALF = (torch.float16, torch.bfloat16)
HALF_FAST = ("causal", "neighborhood_2d")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(case, dtype) -> (cascade, GeneratedKernel), built once per module."""
    folder = tmp_path_factory.mktemp("kernels")
    built = {}

    def get(name, dtype):
        if (name, dtype) not in built:
            make, _, options = ALL_CASES[name]
            cascade = make()
            built[(name, dtype)] = (cascade, build_kernel(
                cascade, dtype=dtype, cache_dir=folder, **options
            ))  # fmt: skip
        return built[(name, dtype)]

    return get


def _check(build, name, dtype):
    cascade, kernel = build(name, dtype)
    tensors = make_inputs(cascade, ALL_CASES[name][1], dtype)
    assert_matches_reference(cascade, kernel(**tensors), tensors, dtype)


@pytest.mark.parametrize("name", ALL_CASES)
def test_fp32_kernel_matches_reference(build, name):
    _check(build, name, torch.float32)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", HALF_FAST)
def test_half_kernel_matches_reference(build, name, dtype):
    _check(build, name, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", [n for n in CASES if n not in HALF_FAST])
def test_half_kernel_matches_reference_all_families(build, name, dtype):
    _check(build, name, dtype)


@pytest.mark.parametrize("length", [5, 33])
def test_any_sequence_length(build, length):
    cascade, kernel = build("causal", torch.float32)
    tensors = make_inputs(cascade, {"p": length, "m": length})
    assert_matches_reference(cascade, kernel(**tensors), tensors, torch.float32)


def test_strided_inputs_run_without_copies(build):
    """Transposed views (heads-second of a heads-third tensor) and a head-dim slice."""
    cascade, kernel = build("gqa", torch.float32)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 20, 4, 24, generator=g).transpose(1, 2)  # [b, h, p, e], stride(2) = 96
    k = torch.randn(1, 2, 20, 40, generator=g)[..., 8:32]  # stride(2) = 40
    v = torch.randn(1, 20, 20, 2, generator=g).permute(0, 3, 1, 2)  # innermost stride 2
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    tensors = {"Q": q, "K": k, "V": v}
    assert_matches_reference(cascade, kernel(**tensors), tensors, torch.float32)


@pytest.mark.parametrize("name", ["causal", "causal_bottom_right_empty_rows", "neighborhood_2d"])
def test_log_sum_exp_of_the_rows(build, name):
    cascade, kernel = build(name, torch.float32)
    tensors = make_inputs(cascade, CASES[name][1])
    result = kernel.run(**tensors)
    stats = dataclasses.replace(cascade, outputs=("GM", "SD"))
    gm, sd = reference(stats, dtype=torch.float64, **tensors)
    expected = gm + torch.log(sd)
    assert result.lse is not None and result.lse.dtype == torch.float32
    torch.testing.assert_close(result.lse.double(), expected, atol=1e-5, rtol=1e-5)


def test_no_log_sum_exp_without_a_running_max(build):
    cascade, kernel = build("sigmoid_causal", torch.float32)
    assert kernel.run(**make_inputs(cascade)).lse is None


def test_runtime_parameters(build):
    cascade, kernel = build("window_sinks", torch.float32)
    tensors = make_inputs(cascade)
    params = {"scale": 0.7, "window_left": 2, "sinks": 0}
    assert_matches_reference(cascade, kernel(**tensors, **params), tensors, torch.float32, **params)


# New map functions, `not`/`or`, and // and % of negative numbers: no template knows them.
_EXOTIC = """
cascade @exotic(Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]) -> (AV) {
  param band: int = 5
  let d = m - p
  QK[b, h, m, p] = Q[b, h, p, e] * K[b, h, m, e] :: sum(e)
    if not (d % 3 == 1) and (d // 4 >= -2 or m < 2)
  S[b, h, m, p] = relu(QK[b, h, m, p]) - elu(QK[b, h, m, p] * 0.5)
    + 0.1 * softplus(QK[b, h, m, p]) + tanh(QK[b, h, m, p]) + min(abs(QK[b, h, m, p]), 2.0)
    + where(d > band, -1.0, sqrt(abs(QK[b, h, m, p]) + 1.0)) + exp2(sigmoid(QK[b, h, m, p]))
    - log2(2.0 + abs(QK[b, h, m, p])) + log(1.5) * neg(QK[b, h, m, p])
  GM[b, h, p] = S[b, h, m, p] :: max(m)
  SN[b, h, m, p] = exp(S[b, h, m, p] - GM[b, h, p])
  SD[b, h, p] = SN[b, h, m, p] :: sum(m)
  A[b, h, m, p] = SN[b, h, m, p] / SD[b, h, p]
  AV[b, h, p, f] = A[b, h, m, p] * V[b, h, m, f] :: sum(m)
}
"""


def test_new_functions_and_predicates_compile_without_templates(tmp_path):
    cascade = loads(_EXOTIC)
    kernel = build_kernel(cascade, dtype=torch.float32, cache_dir=tmp_path, **BLOCK)
    assert "_floormod(" in kernel.text and "_floordiv(" in kernel.text
    tensors = make_inputs(cascade)
    assert_matches_reference(cascade, kernel(**tensors), tensors, torch.float32)


def test_inputs_of_another_dtype_are_rejected(build):
    cascade, kernel = build("causal", torch.float16)
    with pytest.raises(BindError, match=r"input 'Q' is torch.float32, the kernel was built"):
        kernel(**make_inputs(cascade))


def test_unknown_inputs_are_rejected(build):
    cascade, kernel = build("causal", torch.float32)
    with pytest.raises(BindError, match="unknown input tensor 'X'"):
        kernel(**make_inputs(cascade), X=torch.zeros(1))


def test_kernels_are_cached_by_cascade_and_options(tmp_path):
    cascade = softmax_attention(causal=True)
    first = build_kernel(cascade, dtype="float16", cache_dir=tmp_path, **BLOCK)
    again = build_kernel(cascade, dtype=torch.float16, cache_dir=tmp_path, **BLOCK)
    other = build_kernel(cascade, dtype="float32", cache_dir=tmp_path, **BLOCK)
    assert first.path == again.path and first.path.read_text() == first.text
    assert other.path != first.path
    with pytest.raises(KernelError, match="dtype must be one of"):
        build_kernel(cascade, dtype="float64", cache_dir=tmp_path, **BLOCK)
