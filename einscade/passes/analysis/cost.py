"""A cost model of block layouts: work, bytes, tiles and modelled time on an H100.

Everything is per (batch, head) and pure: a layout (or a sample of its rows) in, a frozen
:class:`LayoutCost` out. Notation per visited tile (query tile of ``q`` tokens, key tile of
``k`` tokens), with ``g`` the matrix-multiply granularity (16), ``E``/``F`` the QK/V head
dims and ``b`` bytes per element:

- padded sizes ``q' = ceil(q / g) * g``, ``k' = ceil(k / g) * g``; computed elements
  ``q' * k'`` (padding is computed work), flops ``2 * q' * k' * (E + F)`` (QK^T and PV);
- bytes loaded: K and V of every visited tile, ``k * (E + F) * b``; per query tile Q once
  and the output once, ``q * (E + F) * b``;
- tile time ``max(flops / P + q' * k' / X, bytes / L2)``: a roofline per tile whose compute
  side adds the softmax exponentials (one per computed element at the special-function
  rate X, 3.9 T/s on an H100: FlashAttention-3 names it the bottleneck at head dim 64, and
  the sum reproduces its ~50 % of peak there and ~70 % at 128), and whose loads are L2 hits
  (a K/V tile read again by a neighbouring query tile), plus ``mask_fraction`` of the
  compute side on a partial tile (the element mask: FlexAttention reports 15-20 %);
- overhead: ``iteration_cycles`` per key-loop iteration (one per visited tile, or per
  ``key_chunk`` keys of a larger key box) and ``program_cycles`` per query tile, in SM
  cycles, so ``cycles / (sms * clock)`` of whole-GPU time;
- kernel time ``max(sum of tile, query-tile and overhead times, dram_bytes / DRAM)`` where
  ``dram_bytes`` reads Q, K, V and writes the output once (the floor of any schedule);
- a token permutation (folded dilation or grid groups, see permute.py) adds a gather of Q,
  K and V and a scatter of the output through DRAM, read and written:
  ``2 * N * (2 E + 2 F) * b / DRAM``.

H100 SXM figures: 989 TFLOP/s dense bf16, 3.9 T exp/s, 3.35 TB/s HBM3, 132 SMs at 1.83 GHz
(989e12 / (132 * 1.83e9) = 4096 flop per SM cycle). Assumptions, not measurements: L2 at 12 TB/s
(published microbenchmarks), 64 cycles per key-loop iteration (barrier waits, pointer
updates, the online-softmax rescale) and 256 per query tile (prologue and epilogue not hidden
by the next tile). They decide between near-equal layouts (a 64-query against a 128-query
tile of a sliding window); the work ratios do not depend on them.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from einscade.passes.analysis.block_layout import BlockLayout, Row


@dataclass(frozen=True, slots=True)
class Hardware:
    """Machine figures of the model (module doc); the default is an H100 SXM."""

    name: str = "H100 SXM"
    peak_flops: float = 989e12  # dense bf16 tensor-core flop/s
    exp_rate: float = 3.9e12  # special-function (exp2) results/s
    dram_bandwidth: float = 3.35e12  # bytes/s
    l2_bandwidth: float = 12e12  # bytes/s, assumed
    sms: int = 132
    clock_hz: float = 1.83e9
    granularity: int = 16  # matrix-multiply rows/columns are computed in multiples of this
    key_chunk: int = 128  # keys per key-loop iteration inside a larger key box
    iteration_cycles: float = 64.0
    program_cycles: float = 256.0
    mask_fraction: float = 0.175

    def cycles(self, count: float) -> float:
        """Seconds of whole-GPU time for ``count`` SM cycles spread over every SM."""
        return count / (self.sms * self.clock_hz)


H100 = Hardware()
_SIZE, _FULL = operator.attrgetter("size"), operator.attrgetter("full")


@dataclass(frozen=True, slots=True)
class Heads:
    """Head dimensions and element size: QK dim ``E``, V dim ``F``, bytes per element."""

    qk_dim: int = 64
    v_dim: int = 64
    dtype_bytes: int = 2


@dataclass(frozen=True, slots=True)
class LayoutCost:
    """Work, traffic and modelled time of one layout (per batch and head).

    ``computed_elements`` counts padding (``layout_elements`` does not); ``masked_elements``
    and the ratios need ``useful_elements``. ``partial_elements`` are computed elements
    in tiles that apply the element mask. Times are seconds; ``time`` is the total.
    """

    query_tiles: int
    full_tiles: int
    partial_tiles: int
    iterations: int
    computed_elements: int
    layout_elements: int
    partial_elements: int
    useful_elements: int | None
    flops: float
    bytes_loaded: float
    dram_bytes: float
    compute_time: float
    tile_time: float
    overhead_time: float
    dram_time: float
    permutation_time: float
    time: float

    @property
    def visited_tiles(self) -> int:
        return self.full_tiles + self.partial_tiles

    @property
    def masked_elements(self) -> int | None:
        """Computed elements that are padding or masked out."""
        if self.useful_elements is None:
            return None
        return self.computed_elements - self.useful_elements

    @property
    def work_ratio(self) -> float | None:
        """Computed over useful elements (1.0 is ideal)."""
        return self.computed_elements / self.useful_elements if self.useful_elements else None

    @property
    def useful_fraction(self) -> float | None:
        """Useful over computed elements (1.0 is ideal)."""
        return self.useful_elements / self.computed_elements if self.useful_elements else None

    @property
    def bound(self) -> str:
        """What limits the modelled kernel: 'compute', 'L2', 'DRAM' or 'overhead'."""
        if self.dram_time >= self.tile_time + self.overhead_time:
            return "DRAM"
        if self.overhead_time > self.tile_time:
            return "overhead"
        return "compute" if self.compute_time >= 0.5 * self.tile_time else "L2"


def padded(n: int, granularity: int) -> int:
    """``n`` rounded up to a multiple of ``granularity``."""
    return -(-n // granularity) * granularity


def permutation_bytes(tokens: int, heads: Heads = Heads()) -> float:
    """DRAM bytes of gathering Q, K, V into folded order and scattering the output back."""
    return 2.0 * tokens * (2 * heads.qk_dim + 2 * heads.v_dim) * heads.dtype_bytes


def layout_cost(
    layout: BlockLayout,
    *,
    heads: Heads = Heads(),
    hardware: Hardware = H100,
    useful_elements: int | None = None,
    permuted_tokens: int = 0,
) -> LayoutCost:
    """The cost of a classified layout; ``useful_elements`` defaults to the layout's own
    count, ``permuted_tokens`` to 0 (no permutation)."""
    rows = zip(map(math.prod, layout.query_shapes), layout.key_tiles, strict=True)
    return rows_cost(
        rows,
        query_tokens=math.prod(layout.query_grid),
        key_tokens=math.prod(layout.key_grid),
        heads=heads,
        hardware=hardware,
        useful_elements=layout.useful_elements if useful_elements is None else useful_elements,
        permuted_tokens=permuted_tokens,
    )


def rows_cost(
    rows: Iterable[Row],
    *,
    query_tokens: int,
    key_tokens: int,
    heads: Heads = Heads(),
    hardware: Hardware = H100,
    useful_elements: int | None = None,
    permuted_tokens: int = 0,
    scale: float = 1.0,
) -> LayoutCost:
    """The cost of query-tile rows (module doc). ``scale`` multiplies the rows' extensive
    quantities: a sample of rows, scaled by all tokens over sampled tokens, estimates the
    whole layout (counts are then rounded)."""
    hw, g = hardware, hardware.granularity
    per_key = (heads.qk_dim + heads.v_dim) * heads.dtype_bytes
    flops_per_element = 2.0 * (heads.qk_dim + heads.v_dim)
    sums = _Sums()
    for size, tiles in rows:
        sums.add_row(size, tiles, g, hw, per_key, flops_per_element)
    return _cost(sums, query_tokens, key_tokens, heads, hw, useful_elements, permuted_tokens, scale)


# Query tiles; visited tiles by kind: query size, key size, full, and how many of that kind
# (arrays, or sequences of Python numbers).
Pairs = tuple[int, Sequence, Sequence, Sequence, Sequence]  # type: ignore[type-arg]


def pairs_costs(
    layouts: list[Pairs],
    *,
    query_tokens: int,
    key_tokens: int,
    heads: Heads = Heads(),
    hardware: Hardware = H100,
    permuted_tokens: list[int] | None = None,
) -> list[LayoutCost]:
    """:func:`rows_cost` of whole layouts, each (``query_tiles`` tiles covering
    ``query_tokens``) given as its visited tiles' kinds: arrays of the query tile's size, the
    key tile's size, whether it is full, and how many tiles are of that kind. The same sums,
    for every layout with one pass of array operations (a layout's sums are segment sums)
    instead of a loop over rows."""
    if not layouts:
        return []
    hw, g = hardware, hardware.granularity
    per_key = (heads.qk_dim + heads.v_dim) * heads.dtype_bytes
    flops_per_element = 2.0 * (heads.qk_dim + heads.v_dim)
    sizes = [len(pairs[1]) for pairs in layouts]
    segment = np.repeat(np.arange(len(layouts)), sizes)
    queries, keys, full, counts = (
        np.array([x for p in layouts for x in p[i]], dtype)
        for i, dtype in ((1, np.int64), (2, np.int64), (3, bool), (4, np.int64))
    )
    q, k = -(-queries // g) * g, -(-keys // g) * g
    elements = q * k
    compute = elements * (flops_per_element / hw.peak_flops + 1.0 / hw.exp_rate)
    partial = ~full
    time = np.maximum(compute, keys * (per_key / hw.l2_bandwidth)) + np.where(
        partial, hw.mask_fraction * compute, 0.0
    )
    # One weighted segment sum per column: [columns, kinds] rows, each times the kind's count.
    columns = np.stack([
        full, elements, queries * keys, elements * partial, -(-k // hw.key_chunk), keys,
        compute, time, np.ones_like(keys),
    ]) * counts  # fmt: skip
    sums_by_layout = np.zeros((len(layouts), len(columns)))
    np.add.at(sums_by_layout, segment, columns.T)
    # _cost's formulas at scale 1, per layout, with its constants hoisted (the same float
    # operations in the same order: the same costs, bit for bit; test_product checks).
    q_bytes = query_tokens * per_key
    q_time = q_bytes / hw.l2_bandwidth
    dram_bytes = float((query_tokens + key_tokens) * per_key)
    dram_time = dram_bytes / hw.dram_bandwidth
    cycles = hw.sms * hw.clock_hz
    found = []
    for index, (pairs, column) in enumerate(zip(layouts, sums_by_layout.tolist(), strict=True)):
        full_tiles, computed, layout, partial_elements, iterations, key_sum, comp, tile, n = column
        full, iterations, computed = round(full_tiles), round(iterations), round(computed)
        tile_time = q_time + tile
        overhead = (iterations * hw.iteration_cycles + pairs[0] * hw.program_cycles) / cycles
        permuted = 0 if permuted_tokens is None else permuted_tokens[index]
        extra = permutation_bytes(permuted, heads)
        permutation = extra / hw.dram_bandwidth
        found.append(
            LayoutCost(
                query_tiles=pairs[0], full_tiles=full, partial_tiles=round(n) - full,
                iterations=iterations, computed_elements=computed, layout_elements=round(layout),
                partial_elements=round(partial_elements), useful_elements=None,
                flops=computed * flops_per_element, bytes_loaded=float(q_bytes + key_sum * per_key),
                dram_bytes=dram_bytes + extra, compute_time=comp, tile_time=tile_time,
                overhead_time=overhead, dram_time=dram_time, permutation_time=permutation,
                time=max(tile_time + overhead, dram_time) + permutation,
            )
        )  # fmt: skip
    return found


def _cost(sums, query_tokens, key_tokens, heads, hw, useful_elements, permuted_tokens, scale):  # type: ignore[no-untyped-def]
    per_key = (heads.qk_dim + heads.v_dim) * heads.dtype_bytes
    flops_per_element = 2.0 * (heads.qk_dim + heads.v_dim)
    dram_bytes = float((query_tokens + key_tokens) * per_key)
    tile_time = scale * sums.tile_time
    overhead = hw.cycles(scale * (sums.iterations * hw.iteration_cycles
                                  + sums.query_tiles * hw.program_cycles))  # fmt: skip
    dram_time = dram_bytes / hw.dram_bandwidth
    permutation = permutation_bytes(permuted_tokens, heads) / hw.dram_bandwidth
    return LayoutCost(
        query_tiles=round(scale * sums.query_tiles),
        full_tiles=round(scale * sums.full),
        partial_tiles=round(scale * sums.partial),
        iterations=round(scale * sums.iterations),
        computed_elements=round(scale * sums.computed),
        layout_elements=round(scale * sums.layout),
        partial_elements=round(scale * sums.partial_elements),
        useful_elements=useful_elements,
        flops=scale * sums.computed * flops_per_element,
        bytes_loaded=scale * sums.bytes,
        dram_bytes=dram_bytes + permutation_bytes(permuted_tokens, heads),
        compute_time=scale * sums.compute_time,
        tile_time=tile_time,
        overhead_time=overhead,
        dram_time=dram_time,
        permutation_time=permutation,
        time=max(tile_time + overhead, dram_time) + permutation,
    )


class _Sums:
    """Running totals over rows (mutable scratch inside :func:`rows_cost`)."""

    def __init__(self) -> None:
        self.query_tiles = self.full = self.partial = self.iterations = 0
        self.computed = self.layout = self.partial_elements = 0
        self.bytes = self.tile_time = self.compute_time = 0.0

    def add_row(self, size, tiles, g, hw, per_key, flops_per_element) -> None:  # type: ignore[no-untyped-def]
        q = padded(size, g)
        self.query_tiles += 1
        self.bytes += size * per_key  # Q in, output out
        self.tile_time += size * per_key / hw.l2_bandwidth
        # Tiles of one size and kind cost the same: count them (in C) instead of looping.
        kinds = Counter(zip(map(_SIZE, tiles), map(_FULL, tiles), strict=True))
        for (keys, full), count in kinds.items():
            k = padded(keys, g)
            elements = q * k
            compute = elements * (flops_per_element / hw.peak_flops + 1.0 / hw.exp_rate)
            time = max(compute, keys * per_key / hw.l2_bandwidth)
            self.computed += count * elements
            self.layout += count * size * keys
            self.bytes += count * keys * per_key
            self.iterations += count * -(-k // hw.key_chunk)
            self.compute_time += count * compute
            if full:
                self.full += count
            else:
                self.partial += count
                self.partial_elements += count * elements
                time += hw.mask_fraction * compute
            self.tile_time += count * time
