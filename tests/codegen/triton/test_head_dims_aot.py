"""Head dims up to 256 and unequal QK / V head dims, compiled ahead of time for sm_90a and
sm_80 with the configuration ``config.py`` chooses: no spills, tensor-core instructions,
shared memory within the architecture's limit. Causal softmax (block-sparse 1-D key tiles)
and 2-D neighborhood attention (chunks of key boxes).

A compile takes 2 to 10 s on a loaded machine: the default run compiles the FAST cases on
both architectures; the other head dims and bf16 are marked slow."""

import pytest

from einscade.codegen.triton import build_kernel, compile_for_gpu, kernel_report
from einscade.codegen.triton.report import SHARED_LIMIT
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention

KERNELS = {
    "causal": lambda: softmax_attention(causal=True),
    "neighborhood_2d": lambda: neighborhood_attention(grid=(56, 56), kernel=(7, 7)),
}
TENSOR_CORE_OPS = {90: {"HGMMA"}, 80: {"HMMA"}}
# Default run: head 128 and 256, and one unequal pair per family (MLA-style 192 / 128 for
# causal; 64 / 128 for the neighborhood); head 64 is test_aot.py's.
FAST = [("causal", 128, 128), ("causal", 256, 256), ("causal", 192, 128),
        ("neighborhood_2d", 256, 256), ("neighborhood_2d", 64, 128)]  # fmt: skip
SLOW = [(name, e, f) for name in KERNELS
        for e, f in [(64, 64), (128, 128), (64, 128), (128, 64), (96, 96), (160, 160),
                     (192, 128), (16, 16), (32, 32)]
        if (name, e, f) not in FAST]  # fmt: skip


def _check(folder, name, e, f, arch, dtype="float16"):
    kernel = build_kernel(KERNELS[name](), dtype=dtype, cache_dir=folder,
                          head_dims={"E": e, "F": f}, arch=arch)  # fmt: skip
    assert kernel.options.schedule == "block_sparse"
    assert kernel.options.key_mode == ("box" if name == "neighborhood_2d" else "grid")
    compiled = compile_for_gpu(kernel, arch)  # head dims: those the config was chosen for
    assert f".target {'sm_90a' if arch == 90 else 'sm_80'}" in compiled.asm["ptx"]
    report = kernel_report(compiled, arch, kernel.options.config)
    assert report.spill_bytes == 0, report.summary()
    assert report.registers < 255, report.summary()  # below the cap, not squeezed onto it
    assert 0 < report.shared_bytes <= SHARED_LIMIT[arch], report.summary()
    assert set(report.tensor_core) & TENSOR_CORE_OPS[arch], report.summary()
    assert report.num_warps == kernel.options.num_warps
    assert f"config {kernel.options.config.summary()}" in report.summary()


@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("name, e, f", FAST)
def test_large_and_unequal_head_dims_compile_without_spills(tmp_path, name, e, f, arch):
    _check(tmp_path, name, e, f, arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("name, e, f", SLOW)
def test_more_head_dims_compile_without_spills(tmp_path, name, e, f, arch):
    _check(tmp_path, name, e, f, arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("name, e, f", FAST)
def test_bf16_compiles_without_spills(tmp_path, name, e, f, arch):
    _check(tmp_path, name, e, f, arch, dtype="bfloat16")
