"""The default pipeline: every softmax-family built-in ends in 1 pass, numbers unchanged."""

import pytest
import torch

from einscade.codegen.reference import reference
from einscade.compiler.pipeline import DEFAULT_PIPELINE, run_pipeline
from einscade.frontends.library import BUILTINS
from einscade.passes.analysis import pass_count
from tests.small_builtins import small, small_inputs

SOFTMAX_RANK = {"channel": "d"}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_default_pipeline_reaches_one_pass_and_keeps_the_numbers(name):
    cascade = small(name)
    fused = run_pipeline(cascade, DEFAULT_PIPELINE, debug=0, dump_dir="").cascade
    assert pass_count(fused, SOFTMAX_RANK.get(name, "m")).passes <= 1
    # Tiles of 5 keys: several tiles and a ragged last one at these sizes.
    small_tiles = DEFAULT_PIPELINE.replace("online-softmax", "online-softmax{block=5}")
    tiled = run_pipeline(cascade, small_tiles, debug=0, dump_dir="").cascade
    tensors = small_inputs(cascade)
    expected = reference(cascade, **tensors)
    for candidate in (fused, tiled):
        torch.testing.assert_close(
            reference(candidate, **tensors), expected, rtol=1e-11, atol=1e-11
        )
