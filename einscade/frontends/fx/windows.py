"""Window partitions read off index tensors, and Swin's masks and biases read on the grid.

A partition chain (view / permute / roll, see :mod:`.tokenwise`) is run on the index of
every element of its source. The result says, for each window ``w`` and position ``i``, which
grid token it holds; :func:`window_layout` accepts it only when it equals Swin's formula
for some window and shift, element by element::

    token(b, wy, wx, ry, rx) = (b, (wy * WH + ry + SY) % H, (wx * WW + rx + SX) % W)

(``roll(x, (-SY, -SX))`` then non-overlapping ``WH x WW`` windows), or MaxViT's grid
partition (timm's ``grid_partition``: ``WH x WW`` tokens spread ``H // WH`` apart)::

    token(b, sy, sx, gy, gx) = (b, gy * (H // WH) + sy, gx * (W // WW) + sx)

The additive terms of
the scores are then split (:func:`split_terms`): terms known at compile time must be Swin's
region mask, checked element by element against the windows offset by the shift on the
original grid (:func:`check_constant_mask`); run-time terms must be the same for every
window (the relative-position bias gathered from a table) and become the cascade's
``RB[h, i, j]`` input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.fx import Node

from einscade.frontends.fx import ops
from einscade.frontends.fx.constants import Constants
from einscade.frontends.fx.forms import NoMatch
from einscade.frontends.fx.patterns import Term
from einscade.frontends.fx.tokenwise import run_chain

# Swin fills its region mask with -100: read as masked. Exact masking differs from eager by
# a relative exp(-100) (about 4e-44) per masked key, below float32 resolution.
WINDOW_MASKED_AT = -100.0


@dataclass(frozen=True)
class WindowLayout:
    """Where each windowed token sits on the ``[batch, H, W]`` grid of its source."""

    batch: int
    grid: tuple[int, int]
    window: tuple[int, int]
    shift: tuple[int, int]  # the roll: window row 0 starts at grid row ``shift[0]``
    channels: int
    mode: str = "block"  # "block": contiguous windows; "grid": strided (MaxViT grid)

    @property
    def tokens_per_window(self) -> int:
        return self.window[0] * self.window[1]

    @property
    def windows(self) -> int:
        """Windows per image."""
        return (self.grid[0] // self.window[0]) * (self.grid[1] // self.window[1])

    @property
    def stride(self) -> tuple[int, int]:
        """Grid rows / columns between two tokens of a window (1 for a block)."""
        if self.mode == "block":
            return (1, 1)
        return (self.grid[0] // self.window[0], self.grid[1] // self.window[1])

    def token_map(self) -> torch.Tensor:
        """``[batch * windows, WH * WW]``: the flat grid token (``b * H * W + y * W + x``)
        at each window position, from the formula."""
        (h, w), (wh, ww), (sy, sx) = self.grid, self.window, self.shift
        if self.mode == "grid":  # window (sy, sx), position (gy, gx)
            rows = torch.arange(h // wh)[:, None] + torch.arange(wh) * (h // wh)  # [nWy, wh]
            cols = torch.arange(w // ww)[:, None] + torch.arange(ww) * (w // ww)  # [nWx, ww]
        else:
            rows = (torch.arange(h // wh)[:, None] * wh + torch.arange(wh) + sy) % h
            cols = (torch.arange(w // ww)[:, None] * ww + torch.arange(ww) + sx) % w
        flat = rows[:, None, :, None] * w + cols[None, :, None, :]  # [nWy, nWx, wh, ww]
        images = torch.arange(self.batch)[:, None, None, None, None] * (h * w)
        return (images + flat).reshape(-1, wh * ww)


def window_layout(chain: tuple[Node, ...], source: Node, windowed: Node) -> WindowLayout:
    """The layout the partition ``chain`` (source -> ... -> windowed tokens) builds."""
    _check_no_padding(chain)
    grid_shape = _grid_shape((source, *chain), ops.shape(windowed))
    batch, height, width, channels = grid_shape
    numel = math.prod(grid_shape)
    index = torch.arange(1, numel + 1).reshape(ops.shape(source))
    probe = run_chain(chain, source, index) - 1
    probe = probe.reshape(probe.shape[0], -1, probe.shape[-1])  # [windows, WH, WW, C]: flat
    windows, per_window = probe.shape[0], probe.shape[1]
    if probe.shape != (windows, per_window, channels) or windows * per_window * channels != numel:
        raise NoMatch(f"'{windowed.name}' is not a permutation of the grid tokens")
    tokens = probe[..., 0] // channels
    if not torch.equal(probe, tokens[..., None] * channels + torch.arange(channels)):
        raise NoMatch(f"'{windowed.name}' does not keep each token's channels together")
    first = int(tokens[0, 0])
    shift = ((first // width) % height, first % width)
    for layout in _candidates(batch, (height, width), per_window, shift, channels):
        if torch.equal(layout.token_map(), tokens):
            return layout
    raise NoMatch(f"'{windowed.name}' is not a (rolled) window or grid partition of the token grid")


def _check_no_padding(chain: tuple[Node, ...]) -> None:
    for node in chain:
        if node.target in (torch._C._nn.pad, torch.nn.functional.pad):
            pads = ops.arg(node, 1, "pad")
            if not isinstance(pads, list | tuple) or any(p != 0 for p in pads):
                raise NoMatch(
                    f"'{node.name}' pads the grid to a multiple of the window: "
                    "padded windows are not lifted"
                )


def _grid_shape(nodes: tuple[Node, ...], windowed: tuple | None) -> tuple[int, int, int, int]:
    """The first ``[batch, H, W, C]`` shape along the chain (C: the windowed channels)."""
    if windowed is None or any(ops.static(d) is None for d in windowed):
        raise NoMatch("the windowed tokens have a dynamic shape")
    for node in nodes:
        dims = ops.shape(node)
        if dims is None or any(ops.static(d) is None for d in dims):
            raise NoMatch(f"'{ops.name(node)}' has a dynamic shape")
        if len(dims) == 4 and dims[-1] == windowed[-1] and math.prod(dims) == math.prod(windowed):
            return tuple(dims)  # type: ignore[return-value]
    raise NoMatch("no [batch, H, W, C] token grid along the window partition")


def _candidates(
    batch: int, grid: tuple[int, int], per_window: int, shift: tuple[int, int], channels: int
) -> list[WindowLayout]:
    height, width = grid
    found = []
    for wh in range(1, height + 1):
        ww = per_window // wh
        if height % wh or per_window % wh or ww < 1 or width % ww:
            continue
        found.append(WindowLayout(batch, grid, (wh, ww), shift, channels))
        if shift == (0, 0):
            found.append(WindowLayout(batch, grid, (wh, ww), shift, channels, "grid"))
    return found


# -- the terms of the scores ------------------------------------------------------------------


@dataclass(frozen=True)
class SplitTerms:
    """The additive terms of a window site, split by when they are known."""

    constant: torch.Tensor | None  # [windows or 1, heads or 1, N, N], summed
    constant_nodes: tuple[Node, ...]  # the nodes they were computed from
    runtime: tuple[tuple[Node, float, tuple], ...]  # (node, factor, its shape in the scores)


def split_terms(terms: tuple[Term, ...], scores: tuple | None, constants: Constants) -> SplitTerms:
    """Each term's additive parts (``a + b`` read through), sorted into constants, summed
    into the softmax's view of the scores, and run-time parts."""
    if scores is None:
        raise NoMatch("the scores have no static shape")
    total: torch.Tensor | None = None
    constant_nodes: list[Node] = []
    runtime: list[tuple[Node, float, tuple]] = []
    for term in terms:
        for part in _parts(term.node) if term.kind == "add" else [term.node]:
            value = constants.value(part)
            if value is None:
                if term.kind != "add":
                    raise NoMatch(f"the mask '{part.name}' is computed at run time")
                runtime.append((part, term.factor, term.at or scores))
                continue
            added = _additive(term, value).expand(term.at or scores).reshape(scores)
            total = added if total is None else total + added
            constant_nodes.append(part)
    return SplitTerms(total, tuple(constant_nodes), tuple(runtime))


def _parts(node: Node) -> list[Node]:
    """The summands of ``a + b + ...`` (tensors only)."""
    if ops.kind(node) == "add" and ops.arg(node, 2, "alpha", 1) == 1:
        a, b = node.args[0], node.args[1]
        if isinstance(a, Node) and isinstance(b, Node):
            return [*_parts(a), *_parts(b)]
    return [node]


def _additive(term: Term, value: torch.Tensor) -> torch.Tensor:
    if term.kind == "add":
        return value.to(torch.float32) * term.factor
    fill = torch.tensor(term.fill * term.factor, dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(value, *((fill, zero) if term.kind == "fill_true" else (zero, fill)))


def position_bias_shape(
    part: tuple[Node, float, tuple], layout: WindowLayout, heads: int
) -> tuple[int, int, int]:
    """``[heads or 1, N, N]``: the shape a run-time term takes as ``RB``, which it must
    broadcast to (the same for every window and image)."""
    node, _, placed = part
    dims = ops.shape(node)
    n = layout.tokens_per_window
    if dims is None or len(placed) < 3 or tuple(placed[-2:]) != (n, n):
        raise NoMatch(f"the bias '{node.name}' is not added to [.., {n}, {n}] scores")
    lead = tuple(dims[: max(len(dims) - 3, 0)])
    head = dims[-3] if len(dims) >= 3 else 1
    if any(d != 1 for d in lead) or head not in (1, heads) or tuple(dims[-2:]) != (n, n):
        raise NoMatch(
            f"the bias '{node.name}' {tuple(dims)} differs between windows: not a "
            "relative-position bias"
        )
    return (head, n, n)


def grid_windows(layout: WindowLayout) -> torch.Tensor:
    """``[H, W]``: the window each grid token of the lifted cascade attends within (Swin's
    shifted windows on the original grid: offset by the shift, partial at both ends; a
    MaxViT grid window: the tokens equal modulo the stride)."""
    (h, w), (wh, ww), (sy, sx) = layout.grid, layout.window, layout.shift
    if layout.mode == "grid":
        (ty, tx) = layout.stride
        return (torch.arange(h) % ty)[:, None] * tx + (torch.arange(w) % tx)[None, :]
    rows = (torch.arange(h) + wh - sy % wh) // wh
    cols = (torch.arange(w) + ww - sx % ww) // ww
    return rows[:, None] * (w // ww + 1) + cols[None, :]


def check_constant_mask(layout: WindowLayout, constant: torch.Tensor | None) -> None:
    """Raise :class:`NoMatch` unless per-window attention under the summed constant terms
    (``[windows, heads or 1, N, N]``) equals the lifted cascade: inside every window a pair
    attends (term 0) exactly where the grid windows agree and is masked (term
    ``<= WINDOW_MASKED_AT``) elsewhere, and no grid window reaches across two partition
    windows."""
    tokens = layout.token_map()  # [Bw, N] flat grid tokens
    hw = layout.grid[0] * layout.grid[1]
    cells = grid_windows(layout).reshape(-1)[tokens % hw]  # [Bw, N] grid window ids
    attend = cells[:, :, None] == cells[:, None, :]  # [Bw, N, N]
    n = layout.tokens_per_window
    value = torch.zeros(tokens.shape[0], 1, n, n) if constant is None else constant
    if value.dim() != 4 or value.shape[0] != tokens.shape[0] or value.shape[-2:] != (n, n):
        raise NoMatch(f"the constant mask {tuple(value.shape)} is not [windows, heads, N, N]")
    expected = attend[:, None].expand(value.shape)
    masked = value <= WINDOW_MASKED_AT
    if not bool(((value == 0) == expected).all()) or not bool((masked == ~expected).all()):
        raise NoMatch(
            "the constant mask of the windows is not Swin's region mask for shift "
            f"{layout.shift} (windows that wrap around the grid are not lifted)"
        )
    # Each grid window must lie inside one partition window (checked on the first image:
    # the others repeat it).
    owner = torch.empty(hw, dtype=torch.long)
    owner[tokens[: layout.windows] % hw] = torch.arange(layout.windows)[:, None]
    ids = grid_windows(layout).reshape(-1)
    lo = torch.full((int(ids.max()) + 1,), hw).scatter_reduce(0, ids, owner, "amin")
    hi = torch.full_like(lo, -1).scatter_reduce(0, ids, owner, "amax")
    present = hi >= 0
    if not bool((lo[present] == hi[present]).all()):
        raise NoMatch("a grid window spans two partition windows")
