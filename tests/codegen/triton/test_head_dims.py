"""Head dims 16 to 256, unequal QK / V head dims, padded head dims (80, 96, 160, 192) and
the tiles ``config.py`` chooses for them, under Triton's interpreter against the float64
reference. Sequence lengths leave partial query and key tiles."""

import pytest
import torch

from einscade.codegen.triton import build_kernel
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from tests.codegen.triton.cases import BLOCK, assert_matches_reference, make_inputs

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log")

CAUSAL = softmax_attention(causal=True)
NEIGHBORHOOD = neighborhood_attention(grid=(9, 10), kernel=(3, 5))  # 8x8 boxes overhang


def _run(cascade, dtype, e, f, tokens, folder, arch=None, **options):
    """Build with the configuration chosen for (e, f) on ``arch`` unless ``options`` give
    tiles; run on ``tokens`` queries and keys; compare with the reference."""
    if arch is not None:
        options |= {"head_dims": {"E": e, "F": f}, "arch": arch}
    kernel = build_kernel(cascade, dtype=dtype, cache_dir=folder, **options)
    tensors = make_inputs(cascade, {"p": tokens, "m": tokens, "e": e, "f": f}, dtype)
    assert_matches_reference(cascade, kernel(**tensors), tensors, dtype)
    return kernel


@pytest.mark.parametrize("e, f", [(192, 128), (64, 128), (128, 64), (80, 24)])
def test_unequal_and_padded_head_dims_fp32(tmp_path, e, f):
    _run(CAUSAL, torch.float32, e, f, 20, tmp_path, **BLOCK)


def test_head_256_with_the_sm80_tiles_fp16(tmp_path):
    """64 x 64 tiles, 70 tokens: a partial query tile and a partial key tile."""
    kernel = _run(CAUSAL, torch.float16, 256, 256, 70, tmp_path, arch=80)
    assert (kernel.options.block_p, kernel.options.block_m) == ("64", 64)


def test_mla_head_dims_with_the_sm90_tiles_bf16(tmp_path):
    """E=192 (padded to 256 and masked), F=128: 64 x 32 tiles on sm_90a."""
    kernel = _run(CAUSAL, torch.bfloat16, 192, 128, 45, tmp_path, arch=90)
    assert (kernel.options.block_p, kernel.options.block_m) == ("64", 32)


def test_neighborhood_head_256_with_the_box_key_tiles_fp16(tmp_path):
    kernel = _run(NEIGHBORHOOD, torch.float16, 256, 256, 90, tmp_path, arch=80)
    assert kernel.options.key_mode == "box" and kernel.options.block_p == "8x8"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head", [16, 32, 64, 80, 96, 128, 160, 192, 256])
def test_every_head_dim_with_its_tiles(tmp_path, head, dtype):
    _run(CAUSAL, dtype, head, head, 150, tmp_path, arch=90)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("e, f", [(192, 128), (64, 128), (128, 64), (128, 256), (16, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_unequal_head_dims_with_their_tiles(tmp_path, e, f, arch, dtype):
    _run(CAUSAL, dtype, e, f, 100, tmp_path, arch=arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("e, f", [(64, 64), (96, 96), (192, 128), (256, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_neighborhood_head_dims_with_their_tiles(tmp_path, e, f, arch, dtype):
    _run(NEIGHBORHOOD, dtype, e, f, 90, tmp_path, arch=arch)
