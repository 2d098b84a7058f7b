"""From a block layout to tile groups: the index tensors the torch lowering runs on.

A query tile's keys are the concatenation of its visited key tiles. Tiles with the same
query size and the same (padded) key count form a group, so that one batched matmul
serves the whole group; a group needs an element mask only if one of its tiles has a
partial key tile or padding. Key counts are bucketed (:func:`_buckets`) to keep the
number of groups small at a bounded padding cost. On a 1-D key axis where every tile's
keys are one contiguous range and the ranges start at evenly spaced tokens, the group
reads K and V through strided views instead of gathering copies (:attr:`TileGroup.window`).

Everything here runs once per layout and is cached by the caller.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from einscade.codegen.torch_lowering.evaluate import Evaluator, coordinates
from einscade.codegen.torch_ops import all_of
from einscade.passes.analysis.blocks import BlockLayout, classify
from einscade.passes.analysis.masks import BoundMask, Mask

_MAX_BUCKETS = 8  # groups per (query size, masked) class at most
_MAX_LEVELS = 256  # distinct key counts the bucketing distinguishes
_PAD_SLACK = 1.05  # accept this much padded work to use fewer groups
_MASK_CHUNK = 1 << 22  # pairs per predicate evaluation (bounds temporary memory)


@dataclass(frozen=True)
class LayoutChoice:
    """What :func:`pick_layout` decided, and how (``source``: "cost model" or "rule").
    ``order`` maps the layout's tokens to the original ones when the layout tiles a
    permuted grid (None: the tokens' own order)."""

    query_tile: tuple[int, ...]
    key_mode: str
    key_tile: tuple[int, ...] | None
    pad: int
    source: str = "rule"
    split: int = 0
    order: torch.Tensor | None = field(default=None, compare=False)


def default_choice(query_axes: int) -> LayoutChoice:
    """The simple rule: box query tiles on grids ((8, 8) in 2-D, (4, 4, 4) in 3-D), 1-D
    tiles of 64 otherwise; key boxes (the bounding box of each tile's key region) unpadded
    (the CPU has no vector width to round up to)."""
    query_tile = {2: (8, 8), 3: (4, 4, 4)}.get(query_axes, (64,))
    return LayoutChoice(query_tile, "box", None, 1)


_OPTIONS = ("query_tile", "key_mode", "key_tile", "pad", "layout")
LAYOUT_SOURCES = ("cost", "rule")


def pick_layout(
    mask: Mask,
    sizes: dict[str, int],
    params: dict[str, int | float],
    lookups: dict[str, torch.Tensor],
    at: dict[str, int] | None = None,
    **overrides: object,
) -> tuple[BlockLayout, LayoutChoice]:
    """Choose and classify the block layout of ``mask`` at these sizes.

    The single place where the layout is chosen. By default (``layout="cost"``) the cost
    model's selection (:func:`einscade.passes.analysis.layout.choose_layout`) picks it;
    ``layout="rule"`` applies :func:`default_choice` instead. ``query_tile``, ``key_mode``,
    ``key_tile`` and ``pad`` override the rule's fields (and imply it). Under the rule a
    1-D mask is classified both ways, key boxes and a grid of key tiles of the query tile's
    size, and the grid is kept unless it computes more: its full tiles need no element mask
    (causal, documents), while boxes fit narrow windows tighter.
    """
    unknown = set(overrides) - set(_OPTIONS)
    if unknown:
        raise ValueError(f"pick_layout: unknown option {sorted(unknown)[0]!r}")
    given = {k: v for k, v in overrides.items() if v is not None and k != "layout"}
    source = overrides.get("layout") or ("rule" if given else "cost")
    if source not in LAYOUT_SOURCES:
        raise ValueError(f"pick_layout: layout must be one of {LAYOUT_SOURCES}, got {source!r}")
    if source == "cost" and not given:
        return _cost_model(mask, sizes, params, lookups, at)
    choice = _complete(default_choice(len(mask.query_axes)), given)
    best = _classify(mask, sizes, params, lookups, at, choice)
    if not given and len(mask.query_axes) == 1:
        grid = _complete(choice, {"key_mode": "grid"})
        candidate = _classify(mask, sizes, params, lookups, at, grid)
        if candidate.computed_elements <= best.computed_elements:
            return candidate, grid
    return best, choice


def _cost_model(mask, sizes, params, lookups, at) -> tuple[BlockLayout, LayoutChoice]:  # type: ignore[no-untyped-def]
    from einscade.passes.analysis.layout import choose_layout

    chosen = choose_layout(mask, sizes, params, lookups, at=at)
    spec = chosen.spec
    order = None if chosen.permutation is None else chosen.permutation.order()
    choice = LayoutChoice(spec.query_tile, spec.key_mode, spec.key_tile, spec.pad,
                          "cost model", spec.split, order)  # fmt: skip
    return chosen.layout, choice


def _complete(choice: LayoutChoice, given: dict[str, object]) -> LayoutChoice:
    values = {**choice.__dict__, **given}
    values["query_tile"] = tuple(values["query_tile"])  # type: ignore[arg-type]
    if values["key_mode"] == "grid" and values["key_tile"] is None:
        values["key_tile"] = values["query_tile"]
    return LayoutChoice(**values)  # type: ignore[arg-type]


def _classify(mask, sizes, params, lookups, at, choice: LayoutChoice) -> BlockLayout:  # type: ignore[no-untyped-def]
    return classify(
        mask, sizes, params, lookups, choice.query_tile, choice.key_tile,
        key_mode=choice.key_mode, pad=choice.pad, at=at,
    )  # fmt: skip


@dataclass
class TileGroup:
    """Query tiles of one size with the same padded key count.

    ``queries``/``keys`` hold flat tokens ``[T, Tq]`` / ``[T, Lk]``. ``query_start``: tile
    ``t`` covers tokens ``query_start + t * Tq + [0, Tq)`` (read and written through views).
    ``window = (start, step)``: tile ``t``'s keys are ``start + t * step + [0, Lk)``.
    ``allowed`` is the element mask of key columns ``mask_from:`` (the columns before are
    full key tiles of every tile in the group): ``[T or 1, Tq, Lk - mask_from]``, 1 along
    the tiles when every tile has the same mask; None when every pair is allowed.
    """

    queries: torch.Tensor
    keys: torch.Tensor
    query_start: int | None
    window: tuple[int, int] | None
    allowed: torch.Tensor | None
    mask_from: int = 0
    _cache: dict[tuple, object] = field(default_factory=dict, repr=False)  # type: ignore[type-arg]

    @property
    def num_tiles(self) -> int:
        return self.queries.shape[0]

    @property
    def query_size(self) -> int:
        return self.queries.shape[1]

    @property
    def key_count(self) -> int:
        return self.keys.shape[1]

    @property
    def computed(self) -> int:
        return self.num_tiles * self.query_size * self.key_count

    def bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The mask as an additive bias (0 allowed, -inf not), shaped like ``allowed``;
        the executor broadcasts it over heads (cached per dtype)."""
        if self.allowed is None:
            return None
        if dtype not in self._cache:
            with torch.inference_mode(False):  # a normal tensor serves calls in both modes
                bias = torch.zeros(self.allowed.shape, dtype=dtype)
                self._cache[dtype] = bias.masked_fill_(~self.allowed, float("-inf"))
        return self._cache[dtype]  # type: ignore[return-value]

    def flat_indices(
        self, kv_heads: int, heads: int, tokens: int, keys: int, t0: int, t1: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``q [BK * G * P, E]`` in (key head, tile, query head, token) order and
        rows of ``k [BK * M, E]`` in (key head, tile, key) order, for tiles ``[t0, t1)``."""
        key = ("index", kv_heads, heads, tokens, keys, t0, t1)
        if key not in self._cache:
            self._cache[key] = self._flat_indices(kv_heads, heads, tokens, keys, t0, t1)
        return self._cache[key]  # type: ignore[return-value]

    @torch.inference_mode(False)
    def _flat_indices(self, kv_heads, heads, tokens, keys, t0, t1):  # type: ignore[no-untyped-def]
        queries, key_tokens = self.queries[t0:t1], self.keys[t0:t1]
        base = torch.arange(kv_heads * heads).view(kv_heads, 1, heads, 1) * tokens
        query_rows = (base + queries[None, :, None, :]).reshape(-1)
        key_base = torch.arange(kv_heads).view(kv_heads, 1, 1) * keys
        key_rows = (key_base + key_tokens[None]).reshape(-1)
        return query_rows, key_rows


@dataclass
class Plan:
    """The tile groups of one layout, the query tokens that see no key (their output is 0),
    and the work: score elements computed by the groups and by the layout itself.

    ``flat_group`` is the group (at most one) whose key windows stay evenly spaced across
    the boundary between heads, so all heads run through one strided view (see execute).
    """

    layout: BlockLayout
    choice: LayoutChoice
    groups: list[TileGroup]
    dead: torch.Tensor
    computed_elements: int
    layout_elements: int
    flat_group: TileGroup | None = None


def _flat_group(groups: list[TileGroup], queries: int, keys: int) -> TileGroup | None:
    """The largest group whose windows continue evenly into the next head: consecutive
    query tiles aligned to their size, ``P / Tq`` tiles per head and key windows ``step``
    apart with ``M = (P / Tq) * step``; its mask must be the same for every tile (junk tiles
    between two heads' runs use it too)."""
    eligible = []
    for group in groups:
        size = group.query_size
        if group.window is None or group.query_start is None or queries % size:
            continue
        shared = group.allowed is None or group.allowed.shape[0] == 1
        step = group.window[1]
        if shared and group.query_start % size == 0 and keys == (queries // size) * step:
            eligible.append(group)
    return max(eligible, key=lambda g: g.num_tiles, default=None)


@dataclass
class _Tile:
    """One query tile's tokens. Its first ``full_prefix`` key columns come from full key
    tiles; ``real`` marks the columns that are the tile's own keys (None: all of them;
    padding columns are not)."""

    queries: torch.Tensor
    keys: torch.Tensor
    masked: bool
    contiguous: bool
    full_prefix: int
    real: torch.Tensor | None = None


def build_plan(layout: BlockLayout, choice: LayoutChoice, bound: BoundMask) -> Plan:
    """Group the layout's query tiles, pad, find views, evaluate partial tiles' masks."""
    num_keys = math.prod(bound.key.extents)
    tiles = [_tile(layout, i, choice.order) for i in range(len(layout.key_tiles))]
    dead = [t.queries for t in tiles if t.keys.numel() == 0]
    classes: dict[tuple[int, bool], list[_Tile]] = {}
    for tile in tiles:
        if tile.keys.numel():
            classes.setdefault((tile.queries.numel(), tile.masked), []).append(tile)
    groups = []
    for members in classes.values():
        for bucket, length in _buckets(members):
            padded = [_pad(t, length, num_keys) for t in bucket]
            for run in _runs(padded):
                groups.append(_group(run, bound))
    for group in groups:
        if group.allowed is not None and group.mask_from == 0:
            rows = ~group.allowed.any(-1).expand(group.num_tiles, -1)
            dead.append(group.queries[rows])
    dead_tokens = torch.cat(dead) if dead else torch.zeros(0, dtype=torch.long)
    computed = sum(g.computed for g in groups)
    flat = _flat_group(groups, math.prod(layout.query_grid), num_keys)
    return Plan(layout, choice, groups, dead_tokens.unique(), computed, layout.computed_elements,
                flat)  # fmt: skip


def _tile(layout: BlockLayout, index: int, order: torch.Tensor | None) -> _Tile:
    """A query tile with its key tiles concatenated: in token order when that makes one
    range (views), else full tiles first (so the element mask covers a suffix). Tokens of
    a permuted layout are mapped back through ``order``."""

    def original(tokens: torch.Tensor) -> torch.Tensor:
        return tokens if order is None else order[tokens]

    queries = original(layout.query_tokens(index))
    tiles = list(layout.key_tiles[index])
    if not tiles:
        return _Tile(queries, torch.zeros(0, dtype=torch.long), False, False, 0)
    keys = torch.cat([original(layout.key_tokens(t)) for t in tiles])
    first = int(keys[0])
    contiguous = torch.equal(keys, torch.arange(first, first + keys.numel()))
    if not contiguous:
        tiles.sort(key=lambda t: not t.full)  # stable: token order within each kind
        keys = torch.cat([original(layout.key_tokens(t)) for t in tiles])
    prefix = 0
    for tile in tiles:
        if not tile.full:
            break
        prefix += tile.size
    return _Tile(queries, keys, prefix < keys.numel(), contiguous, prefix)


def _buckets(tiles: list[_Tile]) -> list[tuple[list[_Tile], int]]:
    """Tiles by padded key count: the fewest buckets (at most ``_MAX_BUCKETS``) whose padded
    work is within ``_PAD_SLACK`` of the exact work (dynamic programming over the sorted
    distinct counts, quantised to ``_MAX_LEVELS`` levels; a bucket pads its tiles to its
    largest count)."""
    quantum = -(-max(t.keys.numel() for t in tiles) // _MAX_LEVELS)
    level = {id(t): -(-t.keys.numel() // quantum) * quantum for t in tiles}
    weight = Counter(level.values())
    counts = sorted(weight)
    exact = sum(c * weight[c] for c in counts)
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + weight[c])
    best_cuts: list[int] = list(range(1, len(counts) + 1))
    for k in range(1, min(len(counts), _MAX_BUCKETS) + 1):
        cost, cuts = _partition(counts, prefix, k)
        best_cuts = cuts
        if cost <= _PAD_SLACK * exact:
            break
    buckets, start = [], 0
    for end in best_cuts:
        members = set(counts[start:end])
        bucket = [t for t in tiles if level[id(t)] in members]
        buckets.append((bucket, max(t.keys.numel() for t in bucket)))
        start = end
    return buckets


def _partition(counts: list[int], prefix: list[int], k: int) -> tuple[int, list[int]]:
    """Split sorted ``counts`` into ``k`` runs minimising sum(run max * tiles in run)."""
    n = len(counts)
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0
    for j in range(1, k + 1):
        for end in range(1, n + 1):
            for start in range(j - 1, end):
                value = cost[j - 1][start] + counts[end - 1] * (prefix[end] - prefix[start])
                if value < cost[j][end]:
                    cost[j][end], back[j][end] = value, start
    cuts, end = [], n
    for j in range(k, 0, -1):
        cuts.append(end)
        end = back[j][end]
    return int(cost[k][n]), sorted(cuts)


def _pad(tile: _Tile, length: int, num_keys: int) -> _Tile:
    """Pad a tile's keys to ``length``: a contiguous range grows into neighbouring tokens
    (kept a range, so views still apply), other key lists repeat their last token. Padding
    columns are masked out by :func:`_group` (their tokens are outside the tile's keys)."""
    count = tile.keys.numel()
    if count == length:
        return tile
    if tile.contiguous and length <= num_keys:
        start = min(int(tile.keys[0]), num_keys - length)
        keys = torch.arange(start, start + length)
        real = (keys >= tile.keys[0]) & (keys <= tile.keys[-1])
        prefix = tile.full_prefix if start == int(tile.keys[0]) else 0
        return _Tile(tile.queries, keys, True, True, prefix, real)
    keys = torch.cat([tile.keys, tile.keys[-1:].expand(length - count)])
    return _Tile(tile.queries, keys, True, False, tile.full_prefix, torch.arange(length) < count)


def _runs(tiles: list[_Tile]) -> list[list[_Tile]]:
    """Split tiles into runs whose key ranges start at evenly spaced tokens (views); tiles
    whose keys are not ranges, or runs too short to pay for a group, go to one gather run."""
    if not all(t.contiguous for t in tiles):
        return [tiles]
    runs: list[list[_Tile]] = []
    for tile in tiles:
        start = int(tile.keys[0])
        if runs and (len(runs[-1]) == 1 or start - int(runs[-1][-1].keys[0]) == _step(runs[-1])):
            runs[-1].append(tile)
        else:
            runs.append([tile])
    if len(runs) > 4:  # many short runs: one gathered group beats many small matmuls
        return [tiles]
    return runs


def _step(run: list[_Tile]) -> int:
    return int(run[1].keys[0]) - int(run[0].keys[0])


def _group(tiles: list[_Tile], bound: BoundMask) -> TileGroup:
    queries = torch.stack([t.queries for t in tiles])
    keys = torch.stack([t.keys for t in tiles])
    window = None
    if all(t.contiguous for t in tiles):
        step = int(keys[1, 0] - keys[0, 0]) if len(tiles) > 1 else 0
        window = (int(keys[0, 0]), step)
    size = queries.shape[1]
    first = int(queries[0, 0])
    expected = first + torch.arange(len(tiles) * size).view(len(tiles), size)
    query_start = first if torch.equal(queries, expected) else None
    if not any(t.masked for t in tiles):
        return TileGroup(queries, keys, query_start, window, None)
    start = min(t.full_prefix for t in tiles if t.masked)  # columns before: full everywhere
    reals = [None if t.real is None else t.real[start:] for t in tiles]
    allowed = _allowed(queries, keys[:, start:], reals, bound)
    return TileGroup(queries, keys, query_start, window, allowed, start)


def _allowed(queries, keys, reals, bound: BoundMask) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The predicate on the (query, key) pairs of the group's masked columns (partial key
    tiles and padding), padding excluded; collapsed to one tile when all tiles agree (the
    bias then broadcasts)."""
    tiles, size, length = queries.shape[0], queries.shape[1], keys.shape[1]
    allowed = torch.empty(tiles, size, length, dtype=torch.bool)
    chunk = max(1, _MASK_CHUNK // max(1, size * length))
    for t0 in range(0, tiles, chunk):
        q = queries[t0 : t0 + chunk, :, None]
        k = keys[t0 : t0 + chunk, None, :]
        allowed[t0 : t0 + chunk] = _predicate(bound, q, k)
    for t, real in enumerate(reals):
        if real is not None:
            allowed[t] &= real[None, :]
    if bool((allowed == allowed[:1]).all()):
        return allowed[:1].clone()
    return allowed


def _predicate(bound: BoundMask, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    # (torch.broadcast_shapes would import torch.fx's symbolic shapes: 0.3 s on first use)
    shape = tuple(max(a, b) for a, b in zip(queries.shape, keys.shape, strict=True))
    if bound.predicate is None:
        return torch.ones(shape, dtype=torch.bool)
    env = {**coordinates(bound.query, queries), **coordinates(bound.key, keys)}
    evaluator = Evaluator(env, bound.lookups)  # type: ignore[arg-type]
    value = torch.as_tensor(evaluator(bound.predicate)).to(torch.bool)
    inside = all_of(evaluator.absent)
    if inside is not None:
        value = value & inside
    return value.expand(shape)
