"""Layout choice and tile groups: the index tensors the executor runs on."""

from __future__ import annotations

import pytest
import torch

from einscade.codegen.torch_lowering.plan import build_plan, default_choice, pick_layout
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.passes.analysis.masks import attention_mask


def _plan(cascade, sizes=None, **overrides):  # type: ignore[no-untyped-def]
    mask = attention_mask(cascade)
    layout, choice = pick_layout(mask, sizes or {}, {}, {}, None, **overrides)
    return build_plan(layout, choice, mask.bind(sizes or {})), mask


def test_default_rule_by_grid_rank() -> None:
    assert default_choice(1).query_tile == (64,)
    assert default_choice(2).query_tile == (8, 8)
    assert default_choice(3).query_tile == (4, 4, 4)
    assert default_choice(2).key_mode == "box"


def test_overrides_and_their_errors() -> None:
    mask = attention_mask(softmax_attention(causal=True))
    layout, choice = pick_layout(mask, {"P": 100, "M": 100}, {}, {}, None, query_tile=(16,),
                                 key_mode="grid")  # fmt: skip
    assert choice.key_tile == (16,) and layout.key_mode == "grid"
    with pytest.raises(ValueError, match="unknown option 'tiles'"):
        pick_layout(mask, {"P": 100, "M": 100}, {}, {}, None, tiles=3)


def test_groups_cover_every_query_once_with_their_keys() -> None:
    plan, mask = _plan(neighborhood_attention(grid=(13, 11), kernel=(5, 3)))
    dense = mask.evaluate_dense()
    seen = torch.cat([g.queries.reshape(-1) for g in plan.groups])
    assert torch.equal(seen.sort().values, torch.arange(143))
    for group in plan.groups:
        for t in range(group.num_tiles):
            allowed = dense[group.queries[t]][:, group.keys[t]]
            if group.allowed is None:
                assert bool(allowed.all())
            else:  # the group's mask is the predicate, padding columns excluded
                mine = group.allowed[min(t, group.allowed.shape[0] - 1)]
                assert torch.equal(mine & allowed, mine)
                assert int(mine.sum()) == int(dense[group.queries[t]].sum())


def test_sliding_window_reads_keys_through_views() -> None:
    plan, _ = _plan(softmax_attention(causal=True, window=(511, 0)), {"P": 8192, "M": 8192})
    assert all(g.window is not None and g.query_start is not None for g in plan.groups)
    flat = plan.flat_group
    assert flat is not None and flat.window[1] == 64 and flat.num_tiles >= 120
    assert flat.allowed is not None and flat.allowed.shape[0] == 1  # one mask for all tiles
    assert plan.computed_elements <= 1.05 * plan.layout_elements


def test_few_groups_for_two_dimensional_neighborhoods() -> None:
    plan, _ = _plan(neighborhood_attention(grid=(56, 56), kernel=(7, 7)))
    assert len(plan.groups) == 2  # 11x14/14x11 edges padded to 14x14 would cost more
    assert plan.computed_elements <= 1.05 * plan.layout_elements
    assert plan.flat_group is None


def test_queries_without_keys_are_listed() -> None:
    cascade = softmax_attention(causal="bottom_right")
    plan, _ = _plan(cascade, {"P": 100, "M": 40})
    assert torch.equal(plan.dead, torch.arange(60))


def test_bias_is_additive_and_shared_when_tiles_agree() -> None:
    plan, _ = _plan(softmax_attention(causal=True, window=(63, 0)), {"P": 512, "M": 512})
    group = plan.flat_group
    assert group is not None
    bias = group.bias(torch.float32)
    assert bias is not None
    assert bias.shape == (1, group.query_size, group.key_count - group.mask_from)
    assert set(bias.unique().tolist()) == {0.0, float("-inf")}


def test_full_key_tiles_skip_the_element_mask() -> None:
    plan, _ = _plan(softmax_attention(causal=True), {"P": 4096, "M": 4096})
    masked = sum(0 if g.allowed is None else g.allowed.numel() for g in plan.groups)
    assert masked < plan.computed_elements / 4  # the diagonal tiles, plus a little padding
    assert any(g.mask_from > 0 for g in plan.groups)


def test_rule_keeps_key_boxes_for_narrow_windows_and_a_grid_for_causal() -> None:
    sizes = {"P": 1000, "M": 1000}
    plan, _ = _plan(neighborhood_attention(grid=(1000,), kernel=(9,)), sizes, layout="rule")
    assert plan.choice.key_mode == "box" and plan.groups[0].key_count <= 64 + 8
    plan, _ = _plan(softmax_attention(causal=True), sizes, layout="rule")
    assert plan.choice.key_mode == "grid" and any(g.mask_from > 0 for g in plan.groups)


def test_cost_model_choice_by_default() -> None:
    plan, _ = _plan(neighborhood_attention(grid=(56, 56), kernel=(7, 7)))
    assert plan.choice.source == "cost model" and plan.choice.query_tile == (8, 8)
    with pytest.raises(ValueError, match="layout must be one of"):
        _plan(softmax_attention(causal=True), {"P": 10, "M": 10}, layout="best")


def test_permuted_layouts_map_tokens_back() -> None:
    from einscade.frontends.local import maxvit_attention

    plan, mask = _plan(maxvit_attention(grid=(28, 28), size=7, mode="grid"))
    assert plan.choice.order is not None  # the tiles are boxes of the folded grid
    dense = mask.evaluate_dense()
    for group in plan.groups:
        for t in range(group.num_tiles):  # original tokens: every pair of a tile allowed
            assert bool(dense[group.queries[t]][:, group.keys[t]].all())
