"""Layout selection: enumerate tilings of a mask, model their cost, keep the cheapest.

Candidates (:func:`candidate_specs`):

- 1-D query tiles of 64 and 128 row-major tokens with 1-D key tiles of 64 and 128
  (FlexAttention's layout, on a grid too);
- on a grid, query boxes of several shapes (2-D: 8x8, 8x16, 16x8, 4x16, 16x16; 3-D: 4x4x4,
  4x4x8, 2x8x8), each with one key box per query tile (the bounding box of its queries'
  neighborhoods, computed with the count padded to 16 by the cost model) and with a grid of
  key boxes of the same shape;
- on a single axis, query tiles of 64 and 128 with a key box cut into a partial head, a full
  core and a partial tail (a sink or prefix stays its own small box);
- token permutation: when the mask confines attention to residue classes of an axis
  (dilation, MaxViT grid; see permute.py) the same shapes on the folded grid, one group per
  tile, the gather and scatter counted by the cost model.

Selection costs every box tiling of a product mask (windows per axis, after folding too;
see product.py) exactly, from its factor tiles, all candidates in one pass of array
operations (the winner keeps that cost: it equals ``layout_cost`` of its rows). It
estimates the other candidates from one query tile (its key regions only),
then the contenders (within 10 % of the best) from a sample of eight (evenly spaced in tile
order, scaled to all tokens); it classifies the cheapest one fully and reports it with its
exact cost. The candidates keep their costs (``einscade explain`` shows them). The
classifier and its caches are shared by the candidates of one mask.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from einscade.ir.cascade import Cascade
from einscade.passes.analysis.blocks import BlockLayout, Classifier, KeyTile, count_allowed
from einscade.passes.analysis.cost import (
    H100,
    Hardware,
    Heads,
    LayoutCost,
    layout_cost,
    pairs_costs,
    rows_cost,
)
from einscade.passes.analysis.masks import BoundMask, Mask, Params, Sizes, attention_mask
from einscade.passes.analysis.permute import TokenPermutation, find_folds, fold_mask

BOX_SHAPES = {
    2: ((8, 8), (8, 16), (16, 8), (4, 16), (16, 16)),
    3: ((4, 4, 4), (4, 4, 8), (2, 8, 8)),
}
FLAT_TILES = (64, 128)
SPLIT = 16  # a 1-D key box is cut at multiples of the matrix-multiply granularity
SAMPLE = 8  # query tiles classified per candidate for its estimate
GLANCE = 1  # query tiles per candidate in the first round
CONTENDERS = 1.1  # candidates within this factor of the best first glance are looked at again
DEFAULT_HEADS = Heads()


@dataclass(frozen=True, slots=True)
class LayoutSpec:
    """One tiling: query tile, key mode and key tile (grid mode), box padding and split,
    and the folds of a token permutation (None: tokens in their own order)."""

    query_tile: tuple[int, ...]
    key_mode: str
    key_tile: tuple[int, ...] | None = None
    pad: int = 1
    split: int = 0
    folds: tuple[int, ...] | None = None

    def describe(self) -> str:
        """``query 8x8, key box per tile`` / ``fold 64->2x32, ...; query 1x1x8x8, ...``."""
        query = "x".join(map(str, self.query_tile))
        if self.key_mode == "box":
            keys = "key box per tile" + (f", split at {self.split}" if self.split else "")
        else:
            keys = "key tiles " + "x".join(map(str, self.key_tile or ()))
        text = f"query {query}, {keys}"
        if self.folds is not None:
            folds = ",".join(map(str, self.folds))
            return f"fold ({folds}); {text}"
        return text


@dataclass(frozen=True, slots=True)
class Candidate:
    """A spec with its modelled cost: estimated from ``sampled`` of its ``total`` query
    tiles (exact when they are equal)."""

    spec: LayoutSpec
    cost: LayoutCost
    sampled: int
    total: int

    @property
    def exact(self) -> bool:
        return self.sampled == self.total


@dataclass(frozen=True, slots=True)
class LayoutChoice:
    """The chosen layout, fully classified, with its exact cost.

    ``layout`` tiles ``bound``: the folded mask when ``permutation`` is set, whose tokens
    map back to the original ones through ``permutation.order()`` (see :meth:`query_tokens`).
    ``candidates`` are every spec considered, cheapest estimate first; ``seconds`` is the
    analysis time (estimates and the final classification).
    """

    spec: LayoutSpec
    layout: BlockLayout
    cost: LayoutCost
    permutation: TokenPermutation | None
    bound: BoundMask
    candidates: tuple[Candidate, ...]
    seconds: float

    def describe(self) -> str:
        text = self.spec.describe()
        if self.permutation is not None:
            text = text.replace(
                f"fold ({','.join(map(str, self.spec.folds or ()))})",
                self.permutation.describe(),
            )
        return text

    def query_tokens(self, index: int) -> torch.Tensor:
        """Original (row-major) tokens of query tile ``index``."""
        return self._original(self.layout.query_tokens(index))

    def key_tokens(self, tile: KeyTile) -> torch.Tensor:
        """Original (row-major) tokens of a key tile."""
        return self._original(self.layout.key_tokens(tile))

    def _original(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens if self.permutation is None else self.permutation.order()[tokens]


def choose_layout(
    target: Cascade | Mask | BoundMask,
    sizes: Sizes | None = None,
    params: Params | None = None,
    lookups: dict[str, torch.Tensor] | None = None,
    *,
    at: dict[str, int] | None = None,
    heads: Heads = DEFAULT_HEADS,
    hardware: Hardware = H100,
    specs: list[LayoutSpec] | None = None,
    sample: int = SAMPLE,
    useful_elements: int | None = None,
    count_useful: bool = False,
) -> LayoutChoice:
    """Pick the layout of ``target``'s mask with the lowest modelled cost.

    ``target``: a cascade (its ``attention_mask``), a mask (bound with ``sizes``, ``params``,
    ``lookups``, ``at``) or a bound mask. ``specs`` replaces :func:`candidate_specs`.
    ``useful_elements`` (allowed pairs, when known) or ``count_useful`` (brute force over the
    chosen layout's partial tiles) fill in the cost's work ratio.
    """
    start = time.perf_counter()
    bound = _bind(target, sizes, params, lookups, at)
    plain = Classifier(bound)
    folds = find_folds(bound)
    folded = None if folds is None else Classifier(fold_mask(bound, folds))
    if specs is None:
        specs = candidate_specs(bound, folds)

    def estimate(spec: LayoutSpec, rows: int, refusals: bool) -> Candidate:
        classifier = plain if spec.folds is None else folded
        if classifier is None:
            raise ValueError(f"choose_layout: {spec.describe()} folds a mask that does not fold")
        return _estimate(classifier, spec, heads, hardware, rows, refusals)

    # Two rounds: a glance at two query tiles each (their key regions only), then a closer
    # look at the contenders (more tiles, and which of their tiles are full).
    exact = _exact(bound, specs, plain, folded, heads, hardware)  # costed from every tile
    rest = (estimate(s, min(GLANCE, sample), False) for s in specs if s not in exact)
    glance = sorted([*exact.values(), *rest], key=_rank)
    cutoff = _rank(glance[0])[0] * CONTENDERS
    closer = [
        c if c.exact else estimate(c.spec, sample, True) for c in glance if _rank(c)[0] <= cutoff
    ]
    candidates = sorted(closer, key=_rank) + [c for c in glance if _rank(c)[0] > cutoff]
    best = candidates[0].spec
    classifier = plain if best.folds is None else folded
    assert classifier is not None
    layout = _classify(classifier, best)
    permutation = None if best.folds is None else TokenPermutation(bound.query.extents, best.folds)
    if count_useful and useful_elements is None:
        useful_elements = count_allowed(layout, classifier.bound)
    if useful_elements is not None:
        layout = dataclasses.replace(layout, useful_elements=useful_elements)
    if best in exact:  # already its exact cost (test_product: equal to layout_cost's)
        useful = layout.useful_elements if useful_elements is None else useful_elements
        cost = dataclasses.replace(exact[best].cost, useful_elements=useful)
    else:
        cost = layout_cost(
            layout, heads=heads, hardware=hardware, useful_elements=useful_elements,
            permuted_tokens=0 if permutation is None else permutation.tokens,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    found = tuple(candidates)
    return LayoutChoice(best, layout, cost, permutation, classifier.bound, found, seconds)


def _rank(candidate: Candidate) -> tuple[float, float]:
    """Modelled time, then the kernel's own time: under a DRAM floor (a small window moves
    more bytes than it computes) the layout that computes less still wins."""
    cost = candidate.cost
    return cost.time, cost.tile_time + cost.overhead_time + cost.permutation_time


def _bind(target, sizes, params, lookups, at) -> BoundMask:  # type: ignore[no-untyped-def]
    if isinstance(target, BoundMask):
        return target
    mask = attention_mask(target) if isinstance(target, Cascade) else target
    return mask.bind(sizes, params, lookups, at)


def candidate_specs(bound: BoundMask, folds: tuple[int, ...] | None = None) -> list[LayoutSpec]:
    """The candidates of the module doc for this mask's grids (``folds``: the permutation's,
    or None for none)."""
    extents = bound.query.extents
    specs = _specs_for(extents, len(bound.key.extents), None)
    if folds is not None:
        permutation = TokenPermutation(extents, folds)
        groups = len(permutation.folded_extents) - len(extents)
        specs += _specs_for(permutation.folded_extents, groups + len(extents), folds, groups)
    return list(dict.fromkeys(specs))


def _specs_for(extents, key_axes, folds, groups=0) -> list[LayoutSpec]:  # type: ignore[no-untyped-def]
    """Flat tiles, then boxes over the position axes (extent 1 on the ``groups`` leading
    group axes of a folded grid, so a tile never mixes groups)."""
    positions = extents[groups:]
    specs = []
    if len(extents) == 1 or (groups and len(positions) == 1):
        for q in FLAT_TILES:
            tile = (1,) * groups + (min(q, positions[-1]),)
            specs.append(LayoutSpec(tile, "box", None, 1, SPLIT if key_axes == 1 else 0, folds))
    for q in FLAT_TILES:
        for k in FLAT_TILES:
            specs.append(LayoutSpec((q,), "grid", (k,), 1, 0, folds))
    for shape in BOX_SHAPES.get(len(positions), ()):
        tile = (1,) * groups + tuple(min(s, n) for s, n in zip(shape, positions, strict=True))
        specs.append(LayoutSpec(tile, "box", None, 1, 0, folds))
        specs.append(LayoutSpec(tile, "grid", tile, 1, 0, folds))
    return specs


def _classify(classifier: Classifier, spec: LayoutSpec) -> BlockLayout:
    return classifier.layout(
        spec.query_tile, spec.key_tile, key_mode=spec.key_mode, pad=spec.pad, split=spec.split
    )


def _exact(bound, specs, plain, folded, heads, hardware) -> dict[LayoutSpec, Candidate]:  # type: ignore[no-untyped-def]
    """Exact costs of the specs that tile a product mask with boxes (every query tile, from
    its factor tiles: product.py), summed for all of them at once."""
    found, pairs = [], []
    for spec in specs:
        classifier = plain if spec.folds is None else folded
        if classifier is None or spec.split:
            continue
        visited = classifier.product_pairs(spec.query_tile, spec.key_tile, spec.key_mode, spec.pad)
        if visited is not None:
            found.append(spec)
            pairs.append(visited)
    tokens = math.prod(bound.query.extents)
    costs = pairs_costs(
        pairs, query_tokens=tokens, key_tokens=math.prod(bound.key.extents), heads=heads,
        hardware=hardware, permuted_tokens=[0 if s.folds is None else tokens for s in found],
    )  # fmt: skip
    return {
        spec: Candidate(spec, cost, visited[0], visited[0])
        for spec, cost, visited in zip(found, costs, pairs, strict=True)
    }


def _estimate(
    classifier: Classifier,
    spec: LayoutSpec,
    heads: Heads,
    hardware: Hardware,
    sample: int,
    refusals: bool,
) -> Candidate:
    """Cost of ``sample`` evenly spaced query tiles (one: the tile holding the grid's
    centre, the same tokens for every shape, so they share the evaluator's cached pieces),
    scaled to all tokens. The rows may hold tile kinds (size and fullness) instead of key
    tiles where the classifier gives them directly (``Classifier.rows``)."""
    total = classifier.query_tile_count(spec.query_tile)
    count = min(sample, total)
    indices = sorted({(2 * j + 1) * total // (2 * count) for j in range(count)})
    if count == 1:
        indices = [_centre_tile(classifier.bound.query.extents, spec.query_tile)]
    rows = classifier.rows(
        spec.query_tile, spec.key_tile, indices, key_mode=spec.key_mode, pad=spec.pad,
        split=spec.split, evaluate=False, refusals=refusals, kinds=True,
    )  # fmt: skip
    query_tokens = math.prod(classifier.bound.query.extents)
    sampled_tokens = sum(size for size, _ in rows)
    cost = rows_cost(
        rows,
        query_tokens=query_tokens,
        key_tokens=math.prod(classifier.bound.key.extents),
        heads=heads,
        hardware=hardware,
        permuted_tokens=0 if spec.folds is None else query_tokens,
        scale=query_tokens / sampled_tokens,
    )
    return Candidate(spec, cost, len(indices), total)


def _centre_tile(extents: tuple[int, ...], tile: tuple[int, ...]) -> int:
    """Row-major index of the tile holding the grid's centre token."""
    centre = [n // 2 for n in extents]
    if len(tile) != len(extents):  # row-major token ranges
        token = sum(c * math.prod(extents[a + 1 :]) for a, c in enumerate(centre))
        return token // tile[0]
    index = 0
    for c, n, t in zip(centre, extents, tile, strict=True):
        index = index * -(-n // t) + c // t
    return index
