"""The block layout of a cascade's mask for a report: the chosen tiling and the candidates.

:func:`layout_report` binds the attention mask (query rank ``p``, key rank ``m``) at example
sizes and picks a tiling in :func:`choose`, the one switch between the two choosers:

- the cost model (``einscade.passes.analysis.layout.choose_layout``, when installed): every
  candidate with its modelled time on an H100, estimated from a sample of query tiles; the
  cheapest is classified fully and its cost is exact;
- otherwise a default rule (box query tiles on grids, 1-D query tiles of 128 and key tiles
  of 64 otherwise), with the layout statistics of a few alternatives classified beside it.

Allowed (useful) pairs are counted once, by brute force over the partial tiles of a 1-D
layout, and are the same for every candidate. A mask that reads lookup tensors
(``doc[b, m] == doc[b, p]``) is bound to an example lookup: its query/key dimension split
into four documents of unequal length, every other dimension of extent 1; the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from einscade.ir.cascade import Cascade, size_symbol
from einscade.ir.scope import Scope
from einscade.passes.analysis.blocks import BlockLayout, classify, count_allowed
from einscade.passes.analysis.masks import BoundMask, Mask, attention_mask

# Default query tiles by grid dimensionality: 128 queries each, innermost axis widest.
_BOX_TILES = {2: (8, 16), 3: (2, 4, 16)}
_FLAT_QUERY, _FLAT_KEY = 128, 64
# Example documents for lookup masks: boundaries at these fractions of the tokens.
_DOC_BOUNDS = (0.1, 0.35, 0.55)
Tiling = tuple[tuple[int, ...], tuple[int, ...] | None, str]  # query tile, key tile, key mode


@dataclass(frozen=True, slots=True)
class Candidate:
    """One tiling as the report shows it. Counts are exact when ``estimate`` is None, else
    scaled from a sample of query tiles (``estimate`` says how many); ``empty`` is known
    only for fully classified layouts in grid key mode. ``time_us``/``limit``: the
    modelled time per batch and head and what limits it (cost model only). ``folds``: the
    token permutation."""

    label: str
    query_tile: tuple[int, ...]
    key_tile: tuple[int, ...] | None
    key_mode: str
    partial: int
    full: int
    computed: int
    empty: int | None = None
    time_us: float | None = None
    limit: str | None = None
    estimate: str | None = None
    folds: tuple[int, ...] | None = None

    @property
    def tile_spec(self) -> str | None:
        """The ``tile`` pass running these query tiles (each extent rounded up to a power of
        two, as kernels need); key blocks are the 1-D key tile, else 64. None for a token
        permutation, which the tile pass cannot express."""
        if self.folds is not None:
            return None
        query = "x".join(str(1 << (n - 1).bit_length()) for n in self.query_tile)
        key = self.key_tile[0] if self.key_tile is not None and len(self.key_tile) == 1 else 64
        return f"tile{{p={query},m={key}}}"


@dataclass(frozen=True, slots=True)
class LayoutReport:
    """Every candidate (cost model: cheapest estimate first; default rule: its choice first),
    the chosen one's index and full layout, how it was chosen, and the bound mask."""

    candidates: tuple[Candidate, ...]
    chosen_index: int
    layout: BlockLayout
    chooser: str
    bound: BoundMask
    useful: int
    tile_spec: str
    notes: tuple[str, ...] = ()

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.chosen_index]

    @property
    def dense(self) -> int:
        """Query-key pairs of the unmasked problem: what a dense kernel computes."""
        return math.prod(self.bound.query.extents) * math.prod(self.bound.key.extents)


def default_tiles(query_extents: tuple[int, ...]) -> list[Tiling]:
    """The default rule's candidates for a query grid, its choice first. Box extents shrink
    to the power of two covering a short axis."""
    flat: list[Tiling] = [
        ((_FLAT_QUERY,), (_FLAT_KEY,), "grid"),
        ((_FLAT_KEY,), (_FLAT_KEY,), "grid"),
    ]
    box = _BOX_TILES.get(len(query_extents))
    if box is None:
        return flat
    box = tuple(min(t, 1 << (n - 1).bit_length()) for t, n in zip(box, query_extents, strict=True))
    return [(box, None, "box"), (box, (_FLAT_KEY,), "grid"), *flat]


def layout_report(cascade: Cascade, sizes: dict[str, int]) -> LayoutReport:
    """Choose and describe the layout of ``cascade``'s mask at ``sizes``.

    Raises ``ValueError`` when the cascade has no query rank ``p`` and key rank ``m``, and
    ``BindError`` when a size the mask needs is unknown.
    """
    mask = attention_mask(cascade, "p", "m")
    lookups, notes = example_lookups(cascade, mask, sizes)
    bound = mask.bind(sizes, None, lookups)
    useful = count_allowed(
        classify(mask, sizes, None, lookups, (_FLAT_QUERY,), (_FLAT_KEY,)), bound
    )
    candidates, index, layout, chooser = choose(mask, sizes, lookups, useful)
    tile_spec = candidates[index].tile_spec
    if tile_spec is None:
        query, key, mode = default_tiles(bound.query.extents)[0]
        tile_spec = _plain(query, key, mode, None).tile_spec or ""
        notes.append(f"the tile pass cannot permute tokens: the IR is tiled with {tile_spec}")
    return LayoutReport(tuple(candidates), index, layout, chooser, bound, useful, tile_spec,
                        tuple(notes))  # fmt: skip


def choose(
    mask: Mask, sizes: dict[str, int], lookups: dict[str, torch.Tensor], useful: int
) -> tuple[list[Candidate], int, BlockLayout, str]:
    """(candidates, index of the chosen one, its layout, how it was chosen): the cost model
    when it is installed, else the default rule."""
    try:
        from einscade.passes.analysis.layout import choose_layout
    except ImportError:
        return _default_rule(mask, sizes, lookups)
    from einscade.passes.analysis.cost import Heads

    heads = Heads(sizes.get("E", 64), sizes.get("F", 64), 2)
    choice = choose_layout(mask, sizes, None, lookups, heads=heads, useful_elements=useful)
    candidates = []
    for found in choice.candidates:
        spec, cost = found.spec, found.cost
        estimate = None if found.exact else f"{found.sampled} of {found.total} query tiles"
        if spec == choice.spec:  # the chosen one is classified fully: its exact numbers
            cost, estimate = choice.cost, None
        candidates.append(
            Candidate(
                spec.describe(),
                spec.query_tile,
                spec.key_tile,
                spec.key_mode,
                cost.partial_tiles,
                cost.full_tiles,
                cost.computed_elements,
                _empty(choice.layout) if spec == choice.spec else None,
                cost.time * 1e6,
                cost.bound,
                estimate,
                spec.folds,
            )  # fmt: skip
        )
    index = next(k for k, c in enumerate(choice.candidates) if c.spec == choice.spec)
    chooser = f"cost model (modelled time on an H100, {choice.seconds:.2f} s to choose)"
    return candidates, index, choice.layout, chooser


def _default_rule(
    mask: Mask, sizes: dict[str, int], lookups: dict[str, torch.Tensor]
) -> tuple[list[Candidate], int, BlockLayout, str]:
    extents = mask.bind(sizes, None, lookups).query.extents
    layouts = [
        (classify(mask, sizes, None, lookups, query, key, key_mode=mode), (query, key, mode))
        for query, key, mode in default_tiles(extents)
    ]
    candidates = [_plain(*tiling, layout) for layout, tiling in layouts]
    return candidates, 0, layouts[0][0], "default rule (no cost model installed)"


def _plain(
    query: tuple[int, ...], key: tuple[int, ...] | None, mode: str, layout: BlockLayout | None
) -> Candidate:
    """A default-rule candidate; its statistics come from ``layout`` when given."""
    shown = "x".join(map(str, query))
    label = f"query {shown}, " + (
        "key box per tile" if mode == "box" else f"key tiles {'x'.join(map(str, key))}"
    )
    counts = (0, 0, 0, None) if layout is None else (
        layout.num_partial, layout.num_full, layout.computed_elements, _empty(layout)
    )  # fmt: skip
    return Candidate(label, tuple(query), None if key is None else tuple(key), mode, *counts)


def _empty(layout: BlockLayout) -> int | None:
    """Empty tiles: the tile pairs not visited, in grid mode; box mode has no fixed key
    tiles to leave out."""
    return layout.num_empty if layout.key_mode == "grid" else None


def example_lookups(
    cascade: Cascade, mask: Mask, sizes: dict[str, int]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Example lookup tensors for a mask that reads inputs, and a note for each."""
    tensors, notes = {}, []
    scope = Scope(cascade)
    sides = {mask.query, mask.key, *mask.query_axes, *mask.key_axes}
    for decl in mask.lookups:
        shape = []
        for rank in decl.ranks:
            extent = sizes.get(size_symbol(rank)) if scope.flat_rank(rank) in sides else None
            shape.append(int(extent) if extent else 1)
        n = max(shape)
        bounds = torch.tensor([int(f * n) for f in _DOC_BOUNDS])
        ids = torch.bucketize(torch.arange(n), bounds, right=True)
        view = [n if extent == n else 1 for extent in shape]
        tensors[decl.name] = ids.reshape(view).expand(*shape).contiguous()
        lengths = torch.bincount(ids).tolist()
        notes.append(f"lookup {decl.name}: example values, documents of {lengths} tokens")
    return tensors, notes
