"""Ahead-of-time compilation for Hopper and Ampere without a GPU: tensor cores, no spills."""

import pytest

from einscade.codegen.triton import build_kernel, compile_for_gpu, kernel_report
from einscade.codegen.triton.report import SHARED_LIMIT
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention

KERNELS = {
    "causal": (lambda: softmax_attention(causal=True), {"block_p": 128, "block_m": 64,
                                                        "num_warps": 8, "num_stages": 3}),
    "neighborhood_2d": (lambda: neighborhood_attention(grid=(56, 56), kernel=(7, 7)),
                        {"block_p": (8, 8), "block_m": 64, "num_warps": 4, "num_stages": 3}),
}  # fmt: skip
TENSOR_CORE_OPS = {90: {"HGMMA", "HMMA"}, 80: {"HMMA"}}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kernels")
    done = {}

    def get(name, arch):
        if (name, arch) not in done:
            make, options = KERNELS[name]
            kernel = build_kernel(make(), dtype="float16", cache_dir=folder, **options)
            done[(name, arch)] = compile_for_gpu(kernel, arch, head_dims={"E": 64, "F": 64})
        return done[(name, arch)]

    return get


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("name", KERNELS)
def test_fp16_kernel_uses_tensor_cores_without_spilling(compiled, name, arch):
    kernel = compiled(name, arch)
    target = "sm_90a" if arch == 90 else "sm_80"
    assert f".target {target}" in kernel.asm["ptx"]
    report = kernel_report(kernel, arch)
    assert set(report.tensor_core) & TENSOR_CORE_OPS[arch], report.summary()
    assert report.spill_bytes == 0, report.summary()
    assert 0 < report.shared_bytes <= SHARED_LIMIT[arch], report.summary()
    assert report.registers <= 255
