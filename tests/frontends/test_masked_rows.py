"""Every masked family: a query row whose keys are all masked gives exactly 0, never NaN.

The test masks query 0 in each built-in cascade by adding ``p > 0`` (``c > 0`` for channel
attention) to the first statement that walks both the query rank and the key rank.
"""

from dataclasses import replace

import pytest

from einscade.codegen.reference import reference
from einscade.frontends.library import BUILTINS
from einscade.ir import Binary, Iterate, Name, Num, Scope, verify
from einscade.ir.expr import conjoin
from tests.small_builtins import small, small_inputs


def _mask_first_row(cascade, query_rank, key_rank):
    scope = Scope(cascade)
    body = list(cascade.body)
    for k, stmt in enumerate(body):
        if isinstance(stmt, Iterate):
            continue
        space = {scope.flat_rank(r) for r in scope.iteration_ranks(stmt)}
        if {query_rank, key_rank} <= space:
            guard = Binary(">", Name(query_rank), Num(0))
            body[k] = replace(stmt, predicate=conjoin(stmt.predicate, guard))
            return verify(replace(cascade, body=tuple(body)))
    return None


# Linear attention has no mask to begin with (causal is a recurrence, not a predicate), and
# its normaliser may legitimately be 0 for identity features, so it keeps a plain division.
UNMASKED = {"linear", "linear_causal"}
KEY_RANK = {"channel": ("c", "d"), "agent": ("p", "a")}


@pytest.mark.parametrize("name", sorted(set(BUILTINS) - UNMASKED))
def test_fully_masked_query_row_is_zero(name):
    cascade = small(name)
    query, key = KEY_RANK.get(name, ("p", "m"))
    masked = _mask_first_row(cascade, query, key)
    assert masked is not None, "no statement walks both the query and the key rank"
    tensors = small_inputs(cascade)
    out = reference(masked, **tensors)
    assert not out.isnan().any()
    query_axis = Scope(masked).tensors["AV"].ranks.index(query)
    assert (out.select(query_axis, 0) == 0).all()
    assert (out.select(query_axis, 1) != 0).any()
