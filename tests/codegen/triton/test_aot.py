"""Ahead-of-time compilation for Hopper and Ampere without a GPU: tensor cores, no spills,
vectorized loads; the block-sparse kernels of the causal and neighborhood families."""

import pytest

from einscade.codegen.triton import build_kernel, compile_for_gpu, kernel_report
from einscade.codegen.triton.report import SHARED_LIMIT
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention

KERNELS = {
    "causal": lambda: softmax_attention(causal=True),
    "neighborhood_2d": lambda: neighborhood_attention(grid=(56, 56), kernel=(7, 7)),
}
HEADS = {"E": 64, "F": 64}
TENSOR_CORE_OPS = {90: {"HGMMA", "HMMA"}, 80: {"HMMA"}}


def _build(name, arch, folder, **options):
    """The kernel with the tiles, warps and stages config.py chooses for ``arch``."""
    return build_kernel(KERNELS[name](), dtype="float16", cache_dir=folder, arch=arch,
                        head_dims=HEADS, **options)  # fmt: skip


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kernels")
    done = {}

    def get(name, arch):
        if (name, arch) not in done:
            kernel = _build(name, arch, folder)
            # The default schedule of both: block-sparse (NA: chunks of key boxes).
            assert kernel.options.schedule == "block_sparse"
            assert kernel.options.key_mode == ("box" if name == "neighborhood_2d" else "grid")
            done[(name, arch)] = compile_for_gpu(kernel, arch)
        return done[(name, arch)]

    get.folder = folder
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
    assert report.registers < 255, report.summary()  # the NA kernel sat at the cap
    assert report.widest_load == 128, report.summary()  # fp16 tiles load 8 values a thread


@pytest.mark.slow
@pytest.mark.parametrize("name", KERNELS)
def test_both_kernels_are_block_sparse_with_two_tensor_core_loops(compiled, name):
    """The partial and the full loop each hold both products: twice the dense MMA count."""
    kernel = _build(name, 90, compiled.folder)
    assert kernel.text.count("tl.dot(") == 4
    # The dense kernel with the sparse one's tiles, warps and stages.
    tiles = ("block_p", "block_m", "num_warps", "num_stages")
    given = {option: getattr(kernel.options, option) for option in tiles}
    dense = _build(name, 90, compiled.folder, schedule="dense", **given)
    sparse_mma = kernel_report(compiled(name, 90), 90).tensor_core["HGMMA"]
    dense_mma = kernel_report(compile_for_gpu(dense, 90), 90)
    assert sparse_mma == 2 * dense_mma.tensor_core["HGMMA"]
