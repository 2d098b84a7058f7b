"""The kernel configuration chosen from head dims, dtype and architecture (config.py)."""

import itertools

import pytest

from einscade.codegen.triton import KernelError, build_kernel
from einscade.codegen.triton.config import (
    BOX_TABLE,
    TABLE,
    choose_config,
    padded,
    shared_estimate,
)
from einscade.codegen.triton.report import SHARED_LIMIT
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention

HEADS = (16, 32, 64, 80, 96, 128, 160, 192, 256)
DTYPES = ("float16", "bfloat16", "float32")


def test_head_dim_256_on_sm80_takes_64_rows_and_8_warps():
    config = choose_config((256, 256), "float16", 80)
    assert (config.block_p, config.block_m, config.num_warps) == ("64", 64, 8)
    assert config.num_stages <= 2 and "sm_80" in config.why


def test_large_heads_take_smaller_query_tiles_than_small_heads():
    for arch, dtype in itertools.product((80, 90), DTYPES):
        small = choose_config((64, 64), dtype, arch)
        large = choose_config((256, 256), dtype, arch)
        assert int(large.block_p) < int(small.block_p) or large.block_m < small.block_m


def test_unequal_head_dims_are_sized_by_the_larger_padded_one():
    """E=192 pads to 256: an MLA-style 192 / 128 kernel gets the head-256 tiles."""
    assert choose_config((192, 128), "float16", 90) == choose_config((256, 256), "float16", 90)
    assert choose_config((64, 128), "bfloat16", 80) == choose_config((128, 128), "bfloat16", 80)
    assert padded(80) == 128 and padded(160) == 256 and padded(20) == 32 and padded(8) == 16


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("box_keys", [False, True])
def test_every_choice_fits_the_shared_memory_estimate(arch, box_keys):
    for dtype, e, f in itertools.product(DTYPES, HEADS, HEADS):
        config = choose_config((e, f), dtype, arch, query_axes=2 if box_keys else 1,
                               box_keys=box_keys)  # fmt: skip
        rows = 1
        for extent in config.block_p.split("x"):
            rows *= int(extent)
        used = shared_estimate(rows, config.block_m, (padded(e), padded(f)), dtype,
                               config.num_stages, arch)  # fmt: skip
        assert used <= SHARED_LIMIT[arch], (dtype, e, f, config)


def test_tables_are_ordered_and_end_at_head_256():
    for table in (TABLE, BOX_TABLE):
        for rows in table.values():
            heads = [r.head for r in rows]
            assert heads == sorted(heads) and heads[-1] == 256


def test_query_grids_get_a_box_of_the_rows():
    assert choose_config((64, 64), "float16", 80, query_axes=2, box_keys=True).block_p == "8x8"
    assert choose_config((64, 64), "float16", 90, query_axes=3, box_keys=True).block_p == "4x4x4"
    assert choose_config((256, 256), "float32", 90, query_axes=2, box_keys=True).block_p == "8x4"


def test_the_choice_is_deterministic_and_names_its_reason():
    first = choose_config((192, 128), "bfloat16", 80)
    assert first == choose_config((192, 128), "bfloat16", 80)
    assert first.why and first.summary().startswith("p=64 m=64, 8 warps")


def test_head_dims_over_256_and_unknown_dtypes_are_errors():
    with pytest.raises(KernelError, match="head dim 320 .padded 512. is over 256"):
        choose_config((320, 64), "float16", 90)
    with pytest.raises(KernelError, match="dtype must be one of"):
        choose_config((64,), "float64", 90)


def test_build_kernel_chooses_by_head_dims_and_keys_the_cache_on_them(tmp_path):
    cascade = softmax_attention(causal=True)
    small = build_kernel(cascade, cache_dir=tmp_path, head_dims={"E": 64, "F": 64}, arch=80)
    large = build_kernel(cascade, cache_dir=tmp_path, head_dims={"E": 192, "F": 128}, arch=80)
    hopper = build_kernel(cascade, cache_dir=tmp_path, head_dims={"E": 192, "F": 128}, arch=90)
    assert small.options.config == choose_config((64, 64), "float16", 80)
    assert (large.options.block_p, large.options.num_warps) == ("64", 8)
    assert len({small.key, large.key, hopper.key}) == 3
    assert large.options.head_dims == (("E", 192), ("F", 128))


def test_given_options_override_the_choice(tmp_path):
    cascade = softmax_attention(causal=True)
    kernel = build_kernel(cascade, cache_dir=tmp_path, block_p=16, num_warps=2,
                          head_dims={"E": 256, "F": 256}, arch=80)  # fmt: skip
    config = kernel.options.config
    assert (config.block_p, config.num_warps, config.block_m) == ("16", 2, 64)
    assert config.why.startswith("given: block_p, num_warps; else")


def test_neighborhood_kernels_take_the_box_key_table(tmp_path):
    cascade = neighborhood_attention(grid=(14, 14), kernel=(7, 7))
    kernel = build_kernel(cascade, cache_dir=tmp_path, head_dims={"E": 128, "F": 128}, arch=80)
    assert kernel.options.key_mode == "box"
    assert kernel.options.config == choose_config((128, 128), "float16", 80, query_axes=2,
                                                  box_keys=True)  # fmt: skip
    assert (kernel.options.block_p, kernel.options.num_warps) == ("8x8", 8)
