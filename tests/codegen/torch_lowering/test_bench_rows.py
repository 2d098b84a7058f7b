"""``einscade bench cpu``: its FlexAttention masks are the cascades' masks, and a small
row runs end to end (timings, work ratio, verdicts)."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console

from einscade.compiler.bench_cpu import (
    ROWS,
    Row,
    _blocked_3d,
    _natten_2d,
    _sliding_window,
    add_arguments,
    check,
    markdown_table,
    measure_row,
    print_results,
)
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.passes.analysis.masks import attention_mask


def _dense(mask_mod, tokens: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    q, kv = torch.arange(tokens)[:, None], torch.arange(tokens)[None, :]
    return mask_mod(0, 0, q, kv).expand(tokens, tokens)


def test_flex_masks_equal_the_cascade_masks() -> None:
    cases = [
        (_natten_2d((11, 9), 5), neighborhood_attention(grid=(11, 9), kernel=(5, 5)), 99),
        (_blocked_3d((8, 8, 12), 4), neighborhood_attention(grid=(8, 8, 12), kernel=4, stride=4),
         768),
        (_sliding_window(16), softmax_attention(causal=True, window=(15, 0)), 70),
    ]  # fmt: skip
    for mask_mod, cascade, tokens in cases:
        expected = attention_mask(cascade).evaluate_dense(sizes={"P": tokens, "M": tokens})
        assert torch.equal(_dense(mask_mod, tokens), expected)


def test_rows_are_the_issue_rows() -> None:
    assert {r.tokens for r in ROWS.values()} == {3136, 8192, 16384}
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--no-compile", "--rows", "na2d"])
    assert args.no_compile and args.repeat == 7


def test_a_small_row_runs_and_reports() -> None:
    row = Row("tiny", "tiny 2-D NA", lambda: neighborhood_attention(grid=(12, 12), kernel=(3, 3)),
              144, _natten_2d((12, 12), 3), 1.5)  # fmt: skip
    result = measure_row(row, repeat=1, with_flex=False, heads=1, dim=8)
    assert result.max_error < 1e-5
    assert result.ours_ms > 0 and result.sdpa_ms > 0 and result.flex_ms is None
    assert result.work_ratio > 1 and result.first_call_s < 2
    console = Console(record=True, width=200)
    args = argparse.Namespace(repeat=1, heads=1, dim=8, markdown=True)
    print_results([result], args, console)
    text = console.export_text()
    assert "tiny 2-D NA" in text and ("PASS" in text or "MISS" in text)
    assert len(check(result)) == 2  # SDPA and first call (no FlexAttention)
    assert markdown_table([result]).startswith("| row |")
