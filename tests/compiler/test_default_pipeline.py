"""The default pipeline: every softmax-family built-in ends in 1 pass, numbers unchanged."""

import pytest
import torch

from einscade.codegen.reference import reference
from einscade.compiler.pipeline import DEFAULT_PIPELINE, run_pipeline
from einscade.frontends.library import BUILTINS
from einscade.passes.analysis import pass_count

SMALL = {
    "neighborhood_1d": {"grid": (12,), "kernel": (5,)},
    "neighborhood_2d": {"grid": (4, 3), "kernel": (3, 3)},
    "neighborhood_3d": {"grid": (2, 3, 2), "kernel": (1, 3, 1)},
    "halo": {"grid": (4, 3), "block": 2, "halo": 1},
    "maxvit_block": {"grid": (2, 6), "size": 2},
    "maxvit_grid": {"grid": (2, 6), "size": 2},
    "sliding_window": {"window": (3, 0), "sinks": 1},
    "agent": {"n_agents": 5},
}
EXTENTS = {"b": 1, "h": 2, "hk": 2, "p": 12, "m": 12, "e": 4, "f": 3, "a": 5, "l": 6,
           "n": 12, "c": 4, "d": 4}  # fmt: skip
SOFTMAX_RANK = {"channel": "d"}


def _inputs(cascade):
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for decl in cascade.inputs:
        shape = [EXTENTS[r] for r in decl.ranks]
        if decl.name == "doc":
            tensors[decl.name] = torch.tensor([[0] * 5 + [1] * 7]).expand(*shape).clone()
        else:
            tensors[decl.name] = torch.rand(*shape, generator=g, dtype=torch.float64)
    return tensors


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_default_pipeline_reaches_one_pass_and_keeps_the_numbers(name):
    cascade = BUILTINS[name].build(**SMALL.get(name, {}))
    fused = run_pipeline(cascade, DEFAULT_PIPELINE, debug=0, dump_dir="").cascade
    assert pass_count(fused, SOFTMAX_RANK.get(name, "m")).passes <= 1
    # Tiles of 5 keys: several tiles and a ragged last one at these sizes.
    small_tiles = DEFAULT_PIPELINE.replace("online-softmax", "online-softmax{block=5}")
    tiled = run_pipeline(cascade, small_tiles, debug=0, dump_dir="").cascade
    tensors = _inputs(cascade)
    expected = reference(cascade, **tensors)
    for candidate in (fused, tiled):
        torch.testing.assert_close(
            reference(candidate, **tensors), expected, rtol=1e-11, atol=1e-11
        )
