"""tile: query tiles (ranges and grid boxes) and key blocks keep every family's numbers."""

import pytest
import torch

from einscade.codegen.reference import reference
from einscade.compiler.pipeline import run_pipeline
from einscade.frontends.library import BUILTINS
from einscade.ir import EinscadeError, load, print_cascade
from einscade.passes.tile import Tile
from tests.small_builtins import small, small_inputs

FUSE = "defer-div,online-softmax"
CASES = [
    ("softmax", f"{FUSE},tile{{p=5,m=4}},dce"),
    ("causal", f"{FUSE},tile{{p=7,m=5}},dce"),
    ("gqa", f"{FUSE},tile{{p=12,m=12}},dce"),
    ("sliding_window", f"{FUSE},tile{{p=4,m=3}},dce"),
    ("documents", f"{FUSE},tile{{p=5,m=5}},dce"),
    ("neighborhood_1d", f"{FUSE},tile{{p=5,m=4}},dce"),
    ("neighborhood_2d", f"{FUSE},tile{{p=2x2,m=4}},dce"),
    ("neighborhood_3d", f"{FUSE},tile{{p=1x2x2,m=3}},dce"),
    ("halo", f"{FUSE},tile{{p=2x3,m=5}},dce"),
    ("maxvit_grid", f"{FUSE},tile{{p=2x4,m=5}},dce"),
    ("sigmoid", "tile{p=5,m=4},dce"),
    ("softplus", f"{FUSE},tile{{p=5,m=4}},dce"),
    ("linear", "tile{p=5},dce"),
]


@pytest.mark.parametrize(("name", "spec"), CASES, ids=[c[0] for c in CASES])
def test_tiling_keeps_the_numbers(name, spec):
    cascade = small(name)
    tiled = run_pipeline(cascade, spec, debug=0, dump_dir="").cascade
    tensors = small_inputs(cascade)
    torch.testing.assert_close(
        reference(tiled, **tensors), reference(cascade, **tensors), rtol=1e-11, atol=1e-11
    )


def test_one_dimensional_query_tiles_write_back_through_the_inverse_map():
    two_pass = load("examples/attention_2pass.ecas")
    text = print_cascade(Tile(p="128").run(two_pass).cascade)
    assert "size P0 = 128" in text
    assert "size P1 = (P + P0 - 1) // P0" in text
    assert "AVT[f, p1, p0] = SNV[f, p1, p0] / SD[p1, p0]" in text
    assert "AV[f, p] = AVT[f, p // P0, p % P0]" in text


def test_key_block_sets_the_loop_made_by_online_softmax():
    fused = run_pipeline(load("examples/attention_2pass.ecas"), "online-softmax,tile{m=32}",
                         debug=0, dump_dir="").cascade  # fmt: skip
    assert "size M0 = 32" in print_cascade(fused)
    assert print_cascade(fused).count("iterate") == 1


def test_grid_tile_must_match_the_grid():
    cascade = BUILTINS["neighborhood_2d"].build(grid=(4, 4), kernel=(3, 3))
    with pytest.raises(EinscadeError, match="tile: 'p' has 2 axes, got a 3-D tile"):
        Tile(p="2x2x2").run(cascade)


def test_bad_tile_text_is_reported():
    with pytest.raises(EinscadeError, match="tile: expected sizes like 128 or 8x16, got '8y'"):
        Tile(p="8y").run(load("examples/attention_2pass.ecas"))


def test_a_tensor_read_at_other_positions_cannot_be_tiled():
    chunked = run_pipeline(small("linear_causal"), "chunk-linear", debug=0, dump_dir="").cascade
    with pytest.raises(EinscadeError, match="tile: FQ is read at m1 \\* M0 \\+ m0q, not at 'p'"):
        Tile(p="4").run(chunked)
