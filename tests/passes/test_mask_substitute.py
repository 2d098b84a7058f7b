"""Binding a mask rewrites its predicate with a direct recursion (masks._substitute): the
same expression, and the same range conjuncts in the same order, as the generic
``map_expr`` rewrite it replaces, on the bench's masks and random windows."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.compiler.bench_layouts import ROWS
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir.expr import Access, Name, Num, conjoin, map_expr
from einscade.passes.analysis import masks as masks_module
from einscade.passes.analysis.masks import attention_mask


def _reference(mask, constants, lookups):  # type: ignore[no-untyped-def]
    """``_concrete`` as ``map_expr`` with a rewrite callback (the former implementation)."""

    def substitute(node, constants, read):  # type: ignore[no-untyped-def]
        def rewrite(node):  # type: ignore[no-untyped-def]
            if isinstance(node, Name) and node.id in constants:
                return Num(constants[node.id])
            if isinstance(node, Access):
                return read(node)
            return masks_module._fold(node)

        return map_expr(node, rewrite)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(masks_module, "_substitute", substitute)
        return masks_module._concrete(mask, constants, lookups)


def _both(mask, sizes=None, lookups=None):  # type: ignore[no-untyped-def]
    lookups = lookups or {}
    resolved = masks_module._resolve_sizes(mask, sizes or {}, lookups)
    constants = {**resolved, **masks_module._resolve_params(mask, resolved, {})}
    constants.update(mask._other_ranks(None, lookups))
    return masks_module._concrete(mask, constants, lookups), _reference(mask, constants, lookups)


@pytest.mark.parametrize("row", ROWS, ids=[r.key for r in ROWS])
def test_bench_masks_bind_as_before(row) -> None:  # type: ignore[no-untyped-def]
    cascade, sizes, lookups = row.build()
    found, expected = _both(attention_mask(cascade), sizes, lookups)
    assert found == expected


@given(
    st.lists(st.integers(2, 9), min_size=1, max_size=3),
    st.integers(1, 3),
    st.sampled_from([1, 2]),
)
@settings(deadline=None, max_examples=30)
def test_windows_bind_as_before(grid, kernel, dilation) -> None:  # type: ignore[no-untyped-def]
    grid = tuple(max(n, kernel * dilation) for n in grid)
    cascade = neighborhood_attention(grid, (kernel,) * len(grid), 1, (dilation,) * len(grid))
    sizes = {"P": grid[0], "M": grid[0]} if len(grid) == 1 else None
    found, expected = _both(attention_mask(cascade), sizes)
    assert found == expected


def test_lookup_reads_keep_their_range_conjuncts_in_order() -> None:
    mask = attention_mask(softmax_attention(causal=True, documents=True))
    lookups = {"doc": torch.tensor([[0, 0, 1, 1, 1]])}
    found, expected = _both(mask, {"P": 5, "M": 5}, lookups)
    assert found == expected
    assert conjoin(found) is not None
