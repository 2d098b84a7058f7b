"""The cost model's formulas on hand-made rows and on classified layouts."""

from __future__ import annotations

import dataclasses
import math

import pytest

from einscade.frontends.softmax import softmax_attention
from einscade.passes.analysis.blocks import KeyTile, classify
from einscade.passes.analysis.cost import (
    H100,
    Hardware,
    Heads,
    layout_cost,
    padded,
    permutation_bytes,
    rows_cost,
)
from einscade.passes.analysis.masks import attention_mask

HEADS = Heads(qk_dim=64, v_dim=32, dtype_bytes=2)
PER_KEY = (64 + 32) * 2  # bytes of one token's K and V (or Q and output)
FLOPS = 2 * (64 + 32)  # per computed score element


def tile(keys: int, full: bool) -> KeyTile:
    return KeyTile((0,), (keys,), full)


def test_padding_rounds_up_to_the_granularity() -> None:
    assert [padded(n, 16) for n in (1, 16, 17, 49, 64)] == [16, 16, 32, 64, 64]


def test_one_row_by_hand() -> None:
    """64 queries, a full tile of 64 keys and a partial one of 20 (computed as 32)."""
    cost = rows_cost(
        [(64, (tile(64, True), tile(20, False)))], query_tokens=64, key_tokens=84, heads=HEADS
    )
    assert cost.computed_elements == 64 * 64 + 64 * 32
    assert cost.layout_elements == 64 * 84
    assert cost.partial_elements == 64 * 32
    assert (cost.full_tiles, cost.partial_tiles, cost.query_tiles) == (1, 1, 1)
    assert cost.iterations == 2
    assert cost.flops == cost.computed_elements * FLOPS
    assert cost.bytes_loaded == (64 + 64 + 20) * PER_KEY
    per_element = FLOPS / H100.peak_flops + 1 / H100.exp_rate
    full = max(64 * 64 * per_element, 64 * PER_KEY / H100.l2_bandwidth)
    partial = max(64 * 32 * per_element, 20 * PER_KEY / H100.l2_bandwidth)
    partial += H100.mask_fraction * 64 * 32 * per_element
    query = 64 * PER_KEY / H100.l2_bandwidth
    assert cost.tile_time == pytest.approx(full + partial + query)
    cycles = 2 * H100.iteration_cycles + H100.program_cycles
    assert cost.overhead_time == pytest.approx(cycles / (H100.sms * H100.clock_hz))
    assert cost.dram_time == pytest.approx((64 + 84) * PER_KEY / H100.dram_bandwidth)
    assert cost.time == pytest.approx(max(cost.tile_time + cost.overhead_time, cost.dram_time))
    assert cost.work_ratio is None and cost.masked_elements is None


def test_a_large_key_box_loops_in_chunks() -> None:
    cost = rows_cost([(128, (tile(300, False),))], query_tokens=128, key_tokens=300)
    assert cost.iterations == 3  # 304 padded keys in chunks of 128
    assert cost.computed_elements == 128 * 304


def test_useful_work_gives_the_ratios() -> None:
    cost = rows_cost(
        [(16, (tile(16, False),))], query_tokens=16, key_tokens=16, useful_elements=128
    )
    assert cost.work_ratio == 2.0 and cost.useful_fraction == 0.5 and cost.masked_elements == 128


def test_permutation_adds_a_gather_and_a_scatter() -> None:
    rows = [(64, (tile(64, True),))]
    plain = rows_cost(rows, query_tokens=64, key_tokens=64, heads=HEADS)
    folded = rows_cost(rows, query_tokens=64, key_tokens=64, heads=HEADS, permuted_tokens=64)
    assert permutation_bytes(64, HEADS) == 2 * 64 * (2 * 64 + 2 * 32) * 2
    extra = permutation_bytes(64, HEADS) / H100.dram_bandwidth
    assert folded.permutation_time == pytest.approx(extra)
    assert folded.time == pytest.approx(plain.time + extra)
    assert folded.dram_bytes == plain.dram_bytes + permutation_bytes(64, HEADS)


def test_a_scaled_sample_estimates_the_whole() -> None:
    row = (64, (tile(64, True), tile(32, False)))
    once = rows_cost([row] * 4, query_tokens=256, key_tokens=256)
    scaled = rows_cost([row], query_tokens=256, key_tokens=256, scale=4.0)
    for name in ("computed_elements", "iterations", "full_tiles", "partial_tiles"):
        assert getattr(scaled, name) == getattr(once, name)
    assert scaled.time == pytest.approx(once.time)


def test_little_work_on_many_tokens_is_dram_bound() -> None:
    cost = rows_cost([(16, (tile(16, True),))], query_tokens=4096, key_tokens=4096)
    assert cost.bound == "DRAM" and cost.time == cost.dram_time


def test_tiny_tiles_are_overhead_bound_and_big_ones_compute_bound() -> None:
    tiny = rows_cost([(16, (tile(16, True),) * 8)], query_tokens=16, key_tokens=16)
    big = rows_cost([(128, (tile(128, True),) * 8)], query_tokens=128, key_tokens=128)
    assert tiny.bound == "overhead" and big.bound == "compute"


def test_a_slower_machine_takes_longer() -> None:
    rows = [(128, (tile(128, True),) * 32)]
    slow = dataclasses.replace(H100, peak_flops=H100.peak_flops / 2, exp_rate=H100.exp_rate / 2)
    assert isinstance(slow, Hardware)
    fast_time = rows_cost(rows, query_tokens=128, key_tokens=4096).time
    assert rows_cost(rows, query_tokens=128, key_tokens=4096, hardware=slow).time > fast_time


def test_layout_cost_counts_the_causal_triangle() -> None:
    mask = attention_mask(softmax_attention(causal=True))
    layout = classify(mask, {"P": 256, "M": 256}, None, None, (64,), (64,), count_useful=True)
    cost = layout_cost(layout)
    assert (cost.full_tiles, cost.partial_tiles) == (6, 4)
    assert cost.computed_elements == layout.computed_elements == 10 * 64 * 64
    assert cost.useful_elements == 256 * 257 // 2
    assert cost.work_ratio == pytest.approx(10 * 64 * 64 / (256 * 257 / 2))
    assert cost.partial_elements == 4 * 64 * 64
    assert math.isclose(cost.flops, cost.computed_elements * 2 * 128)
