"""Pictures of a block layout and a mask, drawn headless with matplotlib (Agg) as small PNGs.

- :func:`block_map`: query tiles (rows) x key tiles (columns) coloured empty, partial or full.
  In box key mode the key tiles differ per query tile, so columns are key tokens instead.
  Maps larger than ``MAX_CELLS`` a side are downsampled: a cell stands for a block of
  tiles and is empty or full only if all of them are, partial otherwise.
- :func:`query_mask`: the keys one query attends to. On a 2-D grid: the key grid as an
  image, for the centre query and a corner query (windows shift at borders); on a 3-D grid:
  a row of slices along the first axis; without a grid: the whole query x key mask, rows
  sampled and columns averaged down to ``MAX_CELLS``, the chosen query's row marked.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from einscade.passes.analysis.blocks import BlockLayout
from einscade.passes.analysis.masks import BoundMask

MAX_CELLS = 256  # largest side of a drawn map, in cells
EMPTY, PARTIAL, FULL = 0, 1, 2
_COLOURS = ("#eeeeee", "#f0a030", "#2c6fb7")
_NAMES = ("empty", "partial", "full")
_DPI = 100
_MAX_SLICES = 9


def _pyplot():  # type: ignore[no-untyped-def]
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- block map ---------------------------------------------------------------------------------


def tile_states(layout: BlockLayout) -> np.ndarray:
    """``uint8[query tiles, columns]`` of EMPTY/PARTIAL/FULL: columns are key tiles in grid
    mode (row-major tile index), key tokens in box mode."""
    if layout.key_mode == "grid" and layout.key_tile is not None:
        columns = math.prod(
            -(-g // t) for g, t in zip(layout.key_grid, layout.key_tile, strict=True)
        )
        states = np.zeros((len(layout.key_tiles), columns), dtype=np.uint8)
        for i, tiles in enumerate(layout.key_tiles):
            for tile in tiles:
                states[i, layout.key_tile_index(tile)] = FULL if tile.full else PARTIAL
        return states
    states = np.zeros((len(layout.key_tiles), math.prod(layout.key_grid)), dtype=np.uint8)
    for i, tiles in enumerate(layout.key_tiles):
        for tile in tiles:
            states[i, layout.key_tokens(tile).numpy()] = FULL if tile.full else PARTIAL
    return states


def downsample_states(
    states: np.ndarray, max_cells: int = MAX_CELLS
) -> tuple[np.ndarray, tuple[int, int]]:
    """Blocks of cells -> one cell: EMPTY if all empty, FULL if all full, else PARTIAL.
    Returns the map and the block shape (rows, columns) per cell."""
    rows, cols = states.shape
    fr, fc = max(1, -(-rows // max_cells)), max(1, -(-cols // max_cells))
    if (fr, fc) == (1, 1):
        return states, (1, 1)
    pad = np.full((-(-rows // fr) * fr, -(-cols // fc) * fc), 255, dtype=np.uint8)
    pad[:rows, :cols] = states
    blocks = pad.reshape(pad.shape[0] // fr, fr, pad.shape[1] // fc, fc).swapaxes(1, 2)
    blocks = blocks.reshape(blocks.shape[0], blocks.shape[1], -1)
    all_empty = np.all((blocks == EMPTY) | (blocks == 255), axis=-1)
    all_full = np.all((blocks == FULL) | (blocks == 255), axis=-1)
    out = np.full(all_empty.shape, PARTIAL, dtype=np.uint8)
    out[all_empty] = EMPTY
    out[all_full & ~all_empty] = FULL
    return out, (fr, fc)


def block_map(layout: BlockLayout, path: Path, title: str) -> dict[str, object]:
    """Draw the block map of ``layout`` to ``path`` (PNG); return what the caption needs."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    states = tile_states(layout)
    shown, block = downsample_states(states)
    columns = "key tiles" if layout.key_mode == "grid" else "key tokens"
    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=_DPI)
    ax.imshow(
        shown, cmap=ListedColormap(_COLOURS), vmin=0, vmax=2, aspect="auto", interpolation="nearest"
    )
    ax.set_xlabel(columns + (f" ({block[1]} per column)" if block[1] > 1 else ""))
    ax.set_ylabel("query tiles" + (f" ({block[0]} per row)" if block[0] > 1 else ""))
    ax.set_title(title, fontsize=10)
    handles = [Patch(color=c, label=n) for c, n in zip(_COLOURS, _NAMES, strict=True)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {
        "rows": states.shape[0],
        "columns": states.shape[1],
        "columns_are": columns,
        "block": block,
    }


# -- the mask of one query ---------------------------------------------------------------------


def _grid_mask(bound: BoundMask, query: int) -> np.ndarray:
    keys = torch.arange(math.prod(bound.key.extents))
    return bound.evaluate(torch.tensor([query]), keys).reshape(bound.key.extents).numpy()


def _flat_token(coords: tuple[int, ...], extents: tuple[int, ...]) -> int:
    token = 0
    for c, n in zip(coords, extents, strict=True):
        token = token * n + c
    return token


def _same_grid(bound: BoundMask) -> bool:
    return bound.query.extents == bound.key.extents


def query_mask(bound: BoundMask, path: Path) -> str:
    """Draw the keys of one query (see the module docstring) to ``path``; return a caption."""
    axes = len(bound.key.names)
    if axes == 2:
        return _mask_2d(bound, path)
    if axes == 3:
        return _mask_3d(bound, path)
    return _mask_flat(bound, path)


def _centre(bound: BoundMask) -> tuple[int, ...]:
    return tuple(n // 2 for n in bound.query.extents)


def _mask_2d(bound: BoundMask, path: Path) -> str:
    plt = _pyplot()
    picks = [_centre(bound), (0,) * len(bound.query.extents)]
    fig, axs = plt.subplots(1, 2, figsize=(7.0, 3.6), dpi=_DPI)
    described = []
    for ax, coords in zip(axs, picks, strict=True):
        allowed = _grid_mask(bound, _flat_token(coords, bound.query.extents))
        ax.imshow(allowed, cmap="Blues", vmin=0, vmax=1.4, interpolation="nearest")
        if _same_grid(bound):
            ax.plot(coords[1], coords[0], marker="x", color="#d62728", markersize=8, mew=2)
        names = ", ".join(f"{n}={c}" for n, c in zip(bound.query.names, coords, strict=True))
        described.append(f"query {names}: {int(allowed.sum())} keys")
        ax.set_title(described[-1], fontsize=9)
        ax.set_xlabel(bound.key.names[1])
        ax.set_ylabel(bound.key.names[0])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    grid = "x".join(map(str, bound.key.extents))
    return f"Keys (blue) of a centre and a corner query (red x) on the {grid} key grid: " + (
        "; ".join(described) + "."
    )


def _mask_3d(bound: BoundMask, path: Path) -> str:
    plt = _pyplot()
    coords = _centre(bound)
    allowed = _grid_mask(bound, _flat_token(coords, bound.query.extents))
    used = [k for k in range(allowed.shape[0]) if allowed[k].any()] or [coords[0]]
    lo, hi = max(0, used[0] - 1), min(allowed.shape[0] - 1, used[-1] + 1)
    if hi - lo + 1 > _MAX_SLICES:  # keep a window of slices centred on the query's
        lo = max(lo, min(coords[0] - _MAX_SLICES // 2, hi - _MAX_SLICES + 1))
        hi = lo + _MAX_SLICES - 1
    slices = list(range(lo, hi + 1))
    fig, axs = plt.subplots(
        1, len(slices), figsize=(1.3 * len(slices) + 0.6, 2.2), dpi=_DPI, squeeze=False
    )
    for ax, k in zip(axs[0], slices, strict=True):
        ax.imshow(allowed[k], cmap="Blues", vmin=0, vmax=1.4, interpolation="nearest")
        if _same_grid(bound) and k == coords[0]:
            ax.plot(coords[2], coords[1], marker="x", color="#d62728", markersize=6, mew=2)
        ax.set_title(f"{bound.key.names[0]}={k}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    names = ", ".join(f"{n}={c}" for n, c in zip(bound.query.names, coords, strict=True))
    return (
        f"Keys (blue) of query {names}: {int(allowed.sum())} keys (query at the red x); "
        f"slices {bound.key.names[0]}={slices[0]}..{slices[-1]} of the "
        f"{'x'.join(map(str, bound.key.extents))} key grid."
    )


def _mask_flat(bound: BoundMask, path: Path) -> str:
    plt = _pyplot()
    queries, keys = math.prod(bound.query.extents), math.prod(bound.key.extents)
    step = max(1, -(-queries // MAX_CELLS))
    rows = torch.arange(0, queries, step)
    allowed = bound.evaluate(rows, torch.arange(keys)).to(torch.float32)
    fc = max(1, -(-keys // MAX_CELLS))
    pad = torch.zeros(len(rows), -(-keys // fc) * fc)
    pad[:, :keys] = allowed
    density = pad.reshape(len(rows), -1, fc).mean(-1).numpy()
    query = queries // 2
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=_DPI)
    ax.imshow(
        density,
        cmap="Blues",
        vmin=0,
        vmax=1.2,
        aspect="auto",
        interpolation="nearest",
        extent=(0, keys, queries, 0),
    )
    ax.axhline(query, color="#d62728", lw=1)
    ax.set_xlabel(f"key {bound.key.flat}")
    ax.set_ylabel(f"query {bound.query.flat}")
    count = int(_row(bound, query).sum())
    ax.set_title(f"query {bound.query.flat}={query}: {count} keys", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    sampled = f", every {step}th query row, {fc} keys per column" if step > 1 or fc > 1 else ""
    return (
        f"The {queries}x{keys} mask (blue: allowed{sampled}); the red line is "
        f"query {bound.query.flat}={query}: {count} keys."
    )


def _row(bound: BoundMask, query: int) -> torch.Tensor:
    return bound.evaluate(torch.tensor([query]), torch.arange(math.prod(bound.key.extents)))
