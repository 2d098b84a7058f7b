"""Block-sparse kernels: the block layout drives the key loop (interpreter vs float64)."""

import pytest
import torch

from einscade.codegen.triton import KernelError, build_kernel
from einscade.frontends.local import maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir import loads
from tests.codegen.triton.cases import assert_matches_reference, make_inputs

# Rows with no visible key have log-sum-exp log(0) = -inf; numpy says so on stderr.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log")

BLOCK = {"block_p": 16, "block_m": 16}
NA_BLOCK = {"block_p": (4, 4), "block_m": 16}
BLOCKED_3D = {"block_p": (1, 4, 4), "block_m": 16}  # key tiles = one 4 x 4 block each

# name -> (cascade builder, extents, build options)
CASES = {
    "causal": (lambda: softmax_attention(causal=True), {"p": 50, "m": 50}, BLOCK),
    "window_sinks": (
        lambda: softmax_attention(causal=True, window=(40, 0), sinks=3),
        {"p": 70, "m": 70},
        BLOCK,
    ),
    "documents": (
        lambda: softmax_attention(documents=True, causal=True),
        {"b": 2, "h": 1, "p": 40, "m": 40},
        BLOCK,
    ),
    "neighborhood_2d": (
        lambda: neighborhood_attention(grid=(6, 7), kernel=(3, 3)),
        {"p": 42, "m": 42},
        NA_BLOCK,
    ),
    "neighborhood_2d_flat": (  # 1-D key tiles over the grid's row-major tokens
        lambda: neighborhood_attention(grid=(6, 7), kernel=(3, 3)),
        {"p": 42, "m": 42, "h": 1},
        {**NA_BLOCK, "key_mode": "grid"},
    ),
    "neighborhood_2d_wide": (  # windows span whole rows: some flat key tiles are full
        lambda: neighborhood_attention(grid=(6, 7), kernel=(5, 7)),
        {"p": 42, "m": 42, "h": 1},
        {**NA_BLOCK, "key_mode": "grid"},
    ),
    "neighborhood_3d": (  # chunks of 3-D key boxes
        lambda: neighborhood_attention(grid=(3, 4, 5), kernel=(3, 3, 3)),
        {"p": 60, "m": 60, "h": 1},
        {"block_p": (2, 2, 4), "block_m": 16},
    ),
    "blocked_3d": (
        lambda: maxvit_attention(grid=(4, 4, 4), size=(2, 4, 4), mode="block"),
        {"p": 64, "m": 64, "h": 1},
        BLOCKED_3D,
    ),
    "ragged_bottom_right": (
        lambda: softmax_attention(causal="bottom_right"),
        {"p": 40, "m": 9, "h": 1},
        BLOCK,
    ),
}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(name, dtype, **extra) -> (cascade, GeneratedKernel), built once per module."""
    folder = tmp_path_factory.mktemp("kernels")
    built = {}

    def get(name, dtype=torch.float32, **extra):
        key = (name, dtype, tuple(sorted(extra.items())))
        if key not in built:
            make, _, options = CASES[name]
            cascade = make()
            kernel = build_kernel(cascade, dtype=dtype, cache_dir=folder, **options, **extra)
            built[key] = (cascade, kernel)
        return built[key]

    return get


def _inputs(cascade, name, dtype=torch.float32):
    tensors = make_inputs(cascade, CASES[name][1], dtype)
    if "doc" in tensors:  # documents of different lengths in each batch
        lengths = [(3, 37), (5, 17, 1, 17)]
        tensors["doc"] = torch.stack(
            [torch.repeat_interleave(torch.arange(len(n)), torch.tensor(n)) for n in lengths]
        )
    return tensors


def _reference_lse(cascade, tensors):
    import dataclasses

    from einscade.codegen.reference import reference

    stats = dataclasses.replace(cascade, outputs=("GM", "SD"))
    gm, sd = reference(stats, dtype=torch.float64, **tensors)
    return gm + torch.log(sd)


@pytest.mark.parametrize("name", CASES)
def test_block_sparse_kernel_matches_reference(build, name):
    cascade, kernel = build(name, count_visits=True)
    assert kernel.options.schedule == "block_sparse"
    tensors = _inputs(cascade, name)
    result = kernel.run(**tensors)
    assert_matches_reference(cascade, result.outputs["AV"], tensors, torch.float32)
    torch.testing.assert_close(
        result.lse.double(), _reference_lse(cascade, tensors), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", CASES)
def test_each_program_visits_exactly_the_tiles_of_its_layout_row(build, name):
    cascade, kernel = build(name, count_visits=True)
    tensors = _inputs(cascade, name)
    visits = kernel.run(**tensors).visits  # [b * H + h, p1]
    arrays = kernel.layout_arrays(**tensors)
    batch, heads = tensors["Q"].shape[:2]
    tiles = visits.shape[1]
    counts = arrays.partial_num + arrays.full_num
    stride = arrays.scalars.get("LAYOUT_stride_b", 0)
    for b in range(batch):
        row = counts[b * stride : b * stride + tiles]
        assert torch.equal(visits[b * heads : (b + 1) * heads], row.expand(heads, -1))
    per_batch = [_tiles(kernel, layout) for layout in arrays.layouts]
    assert int(visits.sum()) == heads * sum(per_batch) * (batch // len(arrays.layouts))


def _tiles(kernel, layout):
    """Visited key tiles, or chunks of M0 keys of each key box in box mode."""
    if kernel.options.key_mode == "grid":
        return layout.num_visited
    chunk = kernel.options.block_m
    return sum(-(-tile.size // chunk) for _, tile, _ in layout.tile_work())


def test_causal_skips_the_upper_triangle_and_masks_only_the_diagonal(build):
    cascade, kernel = build("causal", count_visits=True)
    arrays = kernel.layout_arrays(**_inputs(cascade, "causal"))
    # 4 query tiles x 4 key tiles: 10 visited (6 full below the diagonal), 6 empty skipped.
    assert arrays.partial_num.tolist() == [1, 1, 1, 1]
    assert arrays.full_num.tolist() == [0, 1, 2, 3]
    assert arrays.arrays["PARTIAL_IDX"][:, 0].tolist() == [0, 1, 2, 3]


def test_rows_with_no_visited_tile_give_zero_and_minus_infinity(build):
    """Bottom-right causal with 40 queries and 9 keys: query tile 0 sees no key at all."""
    cascade, kernel = build("ragged_bottom_right", count_visits=True)
    tensors = _inputs(cascade, "ragged_bottom_right")
    result = kernel.run(**tensors)
    assert result.visits[:, 0].eq(0).all()
    assert result.outputs["AV"][:, :, :31].eq(0).all()
    assert result.lse[:, :, :31].eq(float("-inf")).all()


@pytest.mark.parametrize("key_mode", ["grid", "box"])
def test_full_tile_loop_of_blocked_3d_has_no_mask_code(build, key_mode):
    cascade, kernel = build("blocked_3d", key_mode=key_mode)
    arrays = kernel.layout_arrays(**_inputs(cascade, "blocked_3d"))
    assert arrays.partial_num.eq(0).all() and arrays.full_num.gt(0).all()
    text = kernel.text
    full_loop = text[text.index("# iterate m1 over the full") : text.index("# SD[")]
    code = [ln.strip() for ln in full_loop.splitlines() if not ln.lstrip().startswith("#")]
    # The body starts after the loop head (box mode: after the chunk's key tokens).
    head = "key = " if key_mode == "box" else "m1 = tl.load("
    body = code[next(k for k, ln in enumerate(code) if ln.startswith(head)) + 1 :]
    assert body[0].startswith("K_tile")
    for piece in ("_mask", "_fiber", "_masked", "in_M", "//", "%"):
        assert not any(piece in line for line in body), piece
    # The only select left is the IR's own where() in the rescale factor CGM.
    selects = [line for line in body if "tl.where(" in line]
    assert len(selects) == 1 and selects[0].startswith("CGM_2 = tl.exp(tl.where(RGM == ")
    partial_loop = text[text.index("over the partial") : text.index("over the full")]
    assert "QK_mask" in partial_loop and "in_M" in partial_loop


def test_box_mode_visits_each_query_tiles_key_box_in_chunks(build):
    """2-D neighborhoods 3 x 3 on a 6 x 7 grid, 4 x 4 query boxes: the key box of a query
    box holds at most 5 x 5 keys (2 chunks of 16), where 1-D tiles cover whole rows."""
    cascade, kernel = build("neighborhood_2d")
    assert kernel.options.key_mode == "box"
    tensors = _inputs(cascade, "neighborhood_2d")
    boxes = kernel.layout_arrays(**tensors)
    sizes = boxes.arrays["CHUNK_SIZE"].tolist()
    assert max(sizes) <= 25 and boxes.visited == len(sizes)  # every chunk in one list
    _, flat = build("neighborhood_2d_flat")
    flat_keys = 16 * flat.layout_arrays(**tensors).visited
    assert 16 * boxes.visited < flat_keys


def test_full_tiles_keep_the_head_padding_mask(build):
    _, kernel = build("causal")
    full_loop = kernel.text[kernel.text.index("over the full key tiles") :]
    assert "mask=in_E[None, :], other=0.0)" in full_loop


@pytest.mark.parametrize("name", ["causal", "neighborhood_2d"])
def test_fp16_block_sparse_kernel_matches_reference(build, name):
    cascade, kernel = build(name, torch.float16)
    tensors = _inputs(cascade, name, torch.float16)
    assert_matches_reference(cascade, kernel(**tensors), tensors, torch.float16)


def test_layout_is_cached_per_sizes_params_and_lookup_contents(tmp_path):
    cascade = softmax_attention(documents=True, causal=True, window=(8, 0))
    kernel = build_kernel(cascade, dtype=torch.float32, cache_dir=tmp_path, **BLOCK)
    tensors = make_inputs(cascade, {"p": 20, "m": 20, "h": 1})
    source = kernel.layout
    kernel.layout_arrays(**tensors)
    kernel.layout_arrays(**tensors)
    assert source.classified == 1
    kernel.layout_arrays(**tensors, window_left=3)  # a mask parameter: a new layout
    assert source.classified == 2
    moved = dict(tensors, doc=tensors["doc"].roll(3, dims=1))  # new documents: a new layout
    kernel.layout_arrays(**moved)
    assert source.classified == 3
    kernel.layout_arrays(**tensors, scale=0.3)  # not the mask's: the cached layout
    assert source.classified == 3
    again = build_kernel(cascade, dtype=torch.float16, cache_dir=tmp_path, **BLOCK)
    assert again.layout is source  # every build of the same mask and tiles shares it


def test_documents_get_one_layout_per_batch(build):
    cascade, kernel = build("documents")
    arrays = kernel.layout_arrays(**_inputs(cascade, "documents"))
    assert len(arrays.layouts) == 2 and arrays.scalars["LAYOUT_stride_b"] == 3
    assert arrays.partial_num.shape == (6,)


# A where() that gives masked keys a value: their points exist, so no tile may be skipped.
_LEAKY = """
cascade @leaky(Q[b, h, p, e], K[b, h, m, e], V[b, h, m, f]) -> (AV) {
  QK[b, h, m, p] = Q[b, h, p, e] * K[b, h, m, e] :: sum(e)
  S[b, h, m, p] = QK[b, h, m, p] * 0.5 if m <= p
  A[b, h, m, p] = where(m <= p, sigmoid(S[b, h, m, p]), 0.5)
  AV[b, h, p, f] = A[b, h, m, p] * V[b, h, m, f] :: sum(m)
}
"""


def test_a_loop_that_empty_tiles_would_change_stays_dense(tmp_path):
    cascade = loads(_LEAKY)
    with pytest.raises(KernelError, match="does not hold the mask conjunct"):
        build_kernel(cascade, cache_dir=tmp_path, schedule="block_sparse", **BLOCK)
    kernel = build_kernel(cascade, dtype=torch.float32, cache_dir=tmp_path, **BLOCK)
    assert kernel.options.schedule == "dense" and kernel.layout is None
    tensors = make_inputs(cascade)
    assert_matches_reference(cascade, kernel(**tensors), tensors, torch.float32)


def test_unmasked_cascades_stay_dense_unless_asked(tmp_path):
    cascade = softmax_attention()
    assert build_kernel(cascade, cache_dir=tmp_path, **BLOCK).options.schedule == "dense"
    forced = build_kernel(cascade, cache_dir=tmp_path, schedule="block_sparse", **BLOCK)
    assert forced.options.schedule == "block_sparse"
    with pytest.raises(KernelError, match="schedule must be one of"):
        build_kernel(cascade, cache_dir=tmp_path, schedule="sparse", **BLOCK)
