"""FactorArrays.query_profile then profile_counts (the two-stage corner sums that
product._prefix_counts uses) equal pair_counts and brute force, for random tables and boxes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from einscade.passes.analysis.factor_arrays import FactorArrays, profile_counts


@st.composite
def boxes(draw, extents: tuple[int, ...], count: int):  # type: ignore[no-untyped-def]
    """Per dim: lower bounds (or None: 0) and upper bounds of ``count`` boxes (some empty)."""
    lo, hi = [], []
    for n in extents:
        ends = draw(st.lists(st.integers(-1, n - 1), min_size=count, max_size=count))
        if draw(st.booleans()):
            lo.append(None)
        else:
            starts = [draw(st.integers(0, max(e, 0))) for e in ends]
            lo.append(np.array(starts, np.int64))
        hi.append(np.array(ends, np.int64))
    return lo, hi


@given(st.data(), st.integers(1, 2), st.integers(1, 6), st.integers(1, 6))
@settings(deadline=None, max_examples=60)
def test_profile_corner_sums_equal_pair_counts(data, d, queries, keys) -> None:  # type: ignore[no-untyped-def]
    extents = tuple(data.draw(st.integers(1, 5)) for _ in range(d))
    seed = data.draw(st.integers(0, 2**16))
    allowed = np.random.default_rng(seed).random(extents * 2) < 0.5
    arrays = FactorArrays(allowed)
    q_lo, q_hi = data.draw(boxes(extents, queries))
    k_lo, k_hi = data.draw(boxes(extents, keys))
    profile = arrays.query_profile(q_lo, q_hi)
    two_stage = profile_counts(profile, k_lo, k_hi)
    column = [None if a is None else a[:, None] for a in q_lo]
    row = [None if a is None else a[None, :] for a in k_lo]
    direct = arrays.pair_counts(
        column + row, [a[:, None] for a in q_hi] + [a[None, :] for a in k_hi]
    )
    assert np.array_equal(two_stage, direct)
    for i in range(queries):  # and both are the brute-force counts (empty boxes count 0)
        for j in range(keys):
            q = tuple(
                slice(0 if lo is None else lo[i], hi[i] + 1)
                for lo, hi in zip(q_lo, q_hi, strict=True)
            )
            k = tuple(
                slice(0 if lo is None else lo[j], hi[j] + 1)
                for lo, hi in zip(k_lo, k_hi, strict=True)
            )
            assert two_stage[i, j] == allowed[q + k].sum()
