"""Which key tiles a query tile visits, and in what order: the head of the kernel's loop.

The loop body only ever reads the key-tile index ``m1``; where it comes from is decided
here, so the body is the same code whichever schedule drives it.

- ``DenseSchedule`` visits every tile ``0 .. M1 - 1`` with the element mask applied.
- ``BlockSparseSchedule`` reads the tiles of the program's query tile from the block layout
  (``layout.py``): two int32 lists per query tile, the *partial* tiles (some pairs absent)
  and the *full* ones (every pair present, none past the sequence end). The partial loop
  runs the body with the mask; the full loop runs a second copy of the body generated from
  the same statements with the mask's conditions dropped. Empty tiles are in no list::

      layout_row = p1 + b * LAYOUT_stride_b
      for step in range(0, tl.load(PARTIAL_NUM_ptr + layout_row)):
          m1 = tl.load(PARTIAL_IDX_ptr + layout_row * PARTIAL_WIDTH + step)
          ...  # body with the mask
      for step in range(0, tl.load(FULL_NUM_ptr + layout_row)):
          m1 = tl.load(FULL_IDX_ptr + layout_row * FULL_WIDTH + step)
          ...  # body without it

A layout row is one query tile of one value of the batch ranks the mask reads (``b`` in
``doc[b, m] == doc[b, p]``); masks that read no batch rank share one row per query tile.

In box key mode (``BoxKeys``) ``m1`` is a chunk of a query tile's key box, and the loop
head turns it into the key tokens that the body reads through a let standing for
``m1 * M0 + m0`` (``sparsity.with_key_let``)::

    chunk_base = tl.load(CHUNK_BASE_ptr + m1)
    point = tl.load(CHUNK_START_ptr + m1) + m0
    extent_1 = tl.load(CHUNK_EXTENT_ptr + m1 * 2 + 1)
    key = tl.where(point < tl.load(CHUNK_SIZE_ptr + m1),
                   chunk_base + (point // extent_1) * KEY_STRIDE_0 + point % extent_1, M)

(a point past the box's end gets token ``M``, out of range, so the body's range check
drops it; full chunks hold no such point and skip the select).

With ``count_visits`` every program also stores how many key tiles it visited (a debug
output, ``VISITS[program_id(1), p1]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from einscade.codegen.triton.args import KernelArg
from einscade.codegen.triton.emitter import Namer
from einscade.ir.cascade import size_symbol

# The int32 arrays of a block layout, in kernel-argument order (chunks: box key mode).
LAYOUT_ARRAYS = ("PARTIAL_NUM", "PARTIAL_IDX", "FULL_NUM", "FULL_IDX")
CHUNK_ARRAYS = ("CHUNK_BASE", "CHUNK_START", "CHUNK_SIZE", "CHUNK_EXTENT")
_WIDTHS = ("PARTIAL_WIDTH", "FULL_WIDTH")  # row lengths of the index arrays


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


@dataclass(frozen=True)
class BoxKeys:
    """Box key mode: ``m1`` is a chunk of a key box, and the loop computes the key tokens
    that the body reads as ``key`` (the let standing for ``m1 * M0 + m0``)."""

    key: str  # the let of the key position, bound at the top of each loop body
    block: str  # the key block rank: m0
    size: str  # the key count: M (the token of a padded chunk point, out of range)
    axes: int  # axes of the key grid


class _Schedule:
    """The parts every schedule shares: the loop variables and the visit counter."""

    layout_ranks: tuple[str, ...] = ()  # batch ranks the layout's rows vary along
    box: BoxKeys | None = None  # box key mode

    def __init__(self, loop_rank: str, tile_rank: str, names: Namer, count_visits: bool):
        self.loop_rank = loop_rank
        self.tile_rank = tile_rank
        self.count_visits = count_visits
        self.visits = names.fresh("visits") if count_visits else ""

    def arguments(self) -> list[KernelArg]:
        """Kernel arguments the schedule reads (besides size symbols)."""
        return [KernelArg("VISITS_ptr", "visits", "VISITS")] if self.count_visits else []

    def generated_names(self) -> set[str]:
        """Argument names the schedule introduces (they must not clash with the cascade's)."""
        return {a.name for a in self.arguments()}

    def _count_start(self) -> list[str]:
        return [f"{self.visits} = 0"] if self.count_visits else []

    def _count_step(self) -> list[str]:
        return [f"{self.visits} += 1"] if self.count_visits else []

    def _count_store(self) -> list[str]:
        if not self.count_visits:
            return []
        program = f"tl.program_id(1) * tl.num_programs(0) + {self.tile_rank}"
        return [
            "# debug: how many key tiles this program visited",
            f"tl.store(VISITS_ptr + {program}, {self.visits})",
        ]


class DenseSchedule(_Schedule):
    """Every key tile, in order; one copy of the body, with the element mask."""

    kind = "dense"
    bodies = 1

    def __init__(
        self, loop_rank: str, tile_rank: str, names: Namer, count_visits: bool = False
    ):  # fmt: skip
        super().__init__(loop_rank, tile_rank, names, count_visits)
        self.count = size_symbol(loop_rank)  # M1

    def sizes(self) -> tuple[str, ...]:
        """Size symbols the loop head reads (kernel arguments)."""
        return (self.count,)

    def render(self, bodies: list[list[str]]) -> list[str]:
        """The loops over key tiles around the body lines (one level deeper)."""
        (body,) = bodies
        rank = self.loop_rank
        return [
            *self._count_start(),
            f"# iterate {rank}: every key tile {rank} = 0 .. {self.count} - 1",
            f"for {rank} in range(0, {self.count}):",
            *_indent(self._count_step() + body),
            *self._count_store(),
        ]


class BlockSparseSchedule(_Schedule):
    """Partial key tiles (body with the mask), then full ones (body without it), read from
    the block layout (see the module docstring)."""

    kind = "block_sparse"
    bodies = 2

    def __init__(
        self, loop_rank: str, tile_rank: str, layout_ranks: tuple[str, ...], names: Namer,
        count_visits: bool = False, box: BoxKeys | None = None,
    ):  # fmt: skip
        super().__init__(loop_rank, tile_rank, names, count_visits)
        self.layout_ranks = layout_ranks
        self.box = box
        self.row = names.fresh("layout_row")
        self.step = names.fresh("step")
        if box is not None:
            self.point = names.fresh("point")
            self.base = names.fresh("chunk_base")
            self.extents = {k: names.fresh(f"extent_{k}") for k in range(1, box.axes)}

    def sizes(self) -> tuple[str, ...]:
        return (self.box.size,) if self.box is not None else ()

    def arguments(self) -> list[KernelArg]:
        arrays = LAYOUT_ARRAYS + (CHUNK_ARRAYS if self.box is not None else ())
        args = [KernelArg(f"{a}_ptr", "layout", a) for a in arrays]
        scalars = [f"LAYOUT_stride_{r}" for r in self.layout_ranks] + list(_WIDTHS)
        if self.box is not None:
            scalars += [f"KEY_STRIDE_{k}" for k in range(self.box.axes - 1)]
        args += [KernelArg(name, "layout_scalar", name) for name in scalars]
        return args + super().arguments()

    def render(self, bodies: list[list[str]]) -> list[str]:
        partial, full = bodies
        row = " + ".join([self.tile_rank, *(f"{r} * LAYOUT_stride_{r}" for r in self.layout_ranks)])
        tiles = "key tiles" if self.box is None else "chunks of key boxes"
        return [
            *self._count_start(),
            f"# {tiles} of query tile {self.tile_rank} from the block layout; empty ones are "
            "in no list",
            f"{self.row} = {row}",
            f"# iterate {self.loop_rank} over the partial {tiles}: the mask applies",
            *self._loop("PARTIAL", partial),
            f"# iterate {self.loop_rank} over the full {tiles}: every pair exists, no mask",
            *self._loop("FULL", full),
            *self._count_store(),
        ]

    def _loop(self, kind: str, body: list[str]) -> list[str]:
        index = f"{kind}_IDX_ptr + {self.row} * {kind}_WIDTH + {self.step}"
        head = [f"{self.loop_rank} = tl.load({index})", *self._keys(kind == "PARTIAL")]
        return [
            f"for {self.step} in range(0, tl.load({kind}_NUM_ptr + {self.row})):",
            *_indent([*head, *self._count_step(), *body]),
        ]

    def _keys(self, partial: bool) -> list[str]:
        """Box mode: the key tokens of chunk ``m1``, point by point of the box in row-major
        order; past the box's last point (partial chunks only) the token is out of range."""
        box = self.box
        if box is None:
            return []
        chunk, point, axes = self.loop_rank, self.point, box.axes
        lines = [
            "# the chunk's points of its key box, unflattened over the key grid",
            f"{self.base} = tl.load(CHUNK_BASE_ptr + {chunk})",
            f"{point} = tl.load(CHUNK_START_ptr + {chunk}) + {box.block}",
        ]
        lines += [
            f"{self.extents[k]} = tl.load(CHUNK_EXTENT_ptr + {chunk} * {axes} + {k})"
            for k in range(1, axes)
        ]
        terms, rest = [], point
        for k in range(axes - 1, 0, -1):
            digit = f"{rest} % {self.extents[k]}"
            terms.append(digit if k == axes - 1 else f"({digit}) * KEY_STRIDE_{k}")
            rest = f"{rest} // {self.extents[k]}"
        terms.append(rest if axes == 1 else f"({rest}) * KEY_STRIDE_0")
        token = " + ".join([self.base, *reversed(terms)])
        if partial:
            inside = f"{point} < tl.load(CHUNK_SIZE_ptr + {chunk})"
            token = f"tl.where({inside}, {token}, {box.size})"
        return lines + [f"{box.key} = {token}"]
