"""``einscade bench layouts``: the FlexAttention mask_mods match our masks, and the command
runs end to end on a tiny row set (no torch.compile)."""

from __future__ import annotations

import pytest
import torch

from einscade.compiler import bench, bench_layouts
from einscade.compiler.bench_layouts import ROWS, Row, check_mask_mod, natten_mod
from einscade.compiler.cli import main
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir.errors import EinscadeError
from einscade.passes.analysis.masks import attention_mask

pytest.importorskip("torch.nn.attention.flex_attention")


@pytest.mark.parametrize("row", ROWS, ids=[r.key for r in ROWS])
def test_mask_mods_match_our_masks(row: Row) -> None:
    cascade, sizes, lookups = row.build()
    bound = attention_mask(cascade).bind(sizes, None, lookups)
    assert bound.query.extents and row.tokens == bound.key.strides[0] * bound.key.extents[0]
    check_mask_mod(bound, row.mask_mod(), row, queries=8)


def test_a_wrong_mask_mod_is_caught() -> None:
    row = ROWS[0]
    cascade, sizes, lookups = row.build()
    bound = attention_mask(cascade).bind(sizes, None, lookups)
    with pytest.raises(EinscadeError, match="differs from our mask"):
        check_mask_mod(bound, natten_mod((56, 56), 5), row, queries=8)


TINY = (
    Row("na2d", "2-D NA 12x12, k 3x3", lambda: (neighborhood_attention((12, 12), 3), None, None),
        lambda: natten_mod((12, 12), 3), 144, 4.5),
    Row("causal", "causal, N=256",
        lambda: (softmax_attention(causal=True), {"P": 256, "M": 256}, None),
        lambda: (lambda b, h, q, kv: kv <= q), 256, 1.02),
)  # fmt: skip


def test_the_command_prints_the_table(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(bench_layouts, "ROWS", TINY)
    assert main(["bench", "layouts", "--no-compile", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "einscade vs FlexAttention" in out and "load average" in out
    assert out.count("PASS") + out.count("MISS") == 4  # work and time, two rows
    assert "causal: causal, N=256; layout query" in out


def test_markdown_and_row_selection(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(bench_layouts, "ROWS", TINY)
    assert main(["bench", "layouts", "--no-compile", "--quick", "--markdown", "--rows",
                 "causal"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| row | ideal |") and lines[2].startswith("| causal | 50.")
    assert sum(line.startswith("| ") for line in lines) == 2  # the header and one row
    assert main(["bench", "layouts", "--rows", "nope"]) == 1
    assert "unknown row 'nope'" in capsys.readouterr().err


def test_flexattention_counts_and_times_are_reported(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    result = bench_layouts.measure(TINY[1], repeat=1, compiled=False, blocks_64=True)
    assert result.useful == 256 * 257 // 2
    assert result.flex_128 == (1, 2) and result.flex_64 == (6, 4)
    assert result.flex_ratio(128) == pytest.approx(3 * 128 * 128 / result.useful)
    assert result.ours[1] > 0 and result.flex_eager[1] > 0 and result.flex_compiled is None
    assert result.ratio == result.choice.cost.computed_elements / result.useful


def test_bench_verbs_are_a_registry() -> None:
    assert bench.VERBS["layouts"] == "einscade.compiler.bench_layouts"
    assert torch.equal(torch.tensor([1]), torch.tensor([1]))  # torch is importable here
