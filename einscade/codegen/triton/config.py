"""Tile sizes, warps and pipeline stages of a generated kernel, chosen from its head dims.

Two tables (``TABLE`` for 1-D key tiles, ``BOX_TABLE`` for key boxes), read top to bottom:
the first row for the architecture and dtype whose head dim covers the kernel's gives the
query rows (``BLOCK_M`` in FlashAttention's terms, our ``P0``), the key tile (``BLOCK_N``,
``M0``), the warps and the stages. The rows were measured by compiling ahead of time (no
GPU; ``einscade kernel-report``): every choice compiles without spills, below 255
registers and within the architecture's shared memory for the causal kernel and the
neighborhood kernel, fp32, fp16 and bf16, head dims 16 to 256, equal and unequal QK / V
head dims (``tests/codegen/triton/test_head_dims_aot.py`` keeps a sample of them).

What decides the choice:

- registers: the output accumulator holds ``rows x F_PAD`` fp32 values and the scores
  ``rows x M0``; the loop-invariant Q tile is an MMA operand in registers as well. At head
  dim 256 a 128-row tile needs more than the 255 registers a thread may have, so large
  heads take 64 rows and 8 warps (FlexAttention's H100 default at head 256 is 64 x 32; our
  kernels carry the mask's index math too, hence 8 warps rather than 4).
- shared memory holds the Q tile and ``stages`` buffers of K and V tiles (one fewer on
  sm_80): at head dim 256, 128 rows and three stages that is 256 KiB, over sm_90a's
  227 KiB. ``_fit_stages`` drops stages where the estimate would not fit (a guard: the
  rows below fit as they are).
- neighborhood kernels (key boxes on a grid) compute every key's grid coordinates in the
  loop: 64-row query boxes (the key box grows with the query box) and 8 warps, which
  brings the sm_80 kernel down from the 255-register limit it hit with 4 warps.
- fp32 inputs multiply in IEEE fp32 on CUDA cores (no tensor cores): operands are twice
  as wide, so tiles shrink with the head dim; for small heads ptxas holds 8 warps to 80
  registers and spills, so they take 4.

Head dims that are not powers of two are padded (``kernel.pad``: 80 -> 128, 192 -> 256)
and masked; the tables are indexed by the largest padded head dim, the one the kernel
allocates (E=192, F=128 takes the head-256 row).

The choice is a pure function of its arguments, and its result is part of the kernel's
cache key (``BuildOptions``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from einscade.codegen.triton.plan import KernelError
from einscade.codegen.triton.report import SHARED_LIMIT

DEFAULT_HEAD_DIM = 64  # assumed when the caller gives no head dims
_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class Row:
    """One row of the table: the largest padded head dim it serves and what it picks."""

    head: int  # largest padded head dim (max over E_PAD, F_PAD) this row serves
    rows: int  # query rows per program (P0); on a query grid, a box of as many rows
    block_m: int  # keys per tile (M0)
    num_warps: int
    num_stages: int
    why: str


# (arch, dtype class) -> rows by head dim, smallest first. "half" is fp16 and bf16.
# Registers per thread measured at the row's largest head dim (causal kernel, AOT).
TABLE: dict[tuple[int, str], tuple[Row, ...]] = {
    (90, "half"): (
        Row(128, 128, 64, 8, 3, "2 warpgroups of HGMMA on 128 rows, 3 stages (205 regs)"),
        Row(256, 64, 32, 8, 2, "128 rows spill at head 256; 64 x 32 as FlexAttention (185)"),
    ),
    (80, "half"): (
        Row(128, 128, 64, 8, 3, "FA2/FlexAttention's 128 x 64 with 8 warps (207 regs)"),
        Row(256, 64, 64, 8, 2, "Q stays in registers on sm_80: 64 rows, 8 warps (183)"),
    ),
    # fp32: tl.dot in IEEE fp32 on CUDA cores; operands twice as wide, no MMA layouts.
    (90, "fp32"): (
        Row(64, 64, 32, 8, 2, "fp32 FMA dot, 8 warps (212 regs)"),
        Row(128, 32, 16, 8, 2, "fp32 FMA dot at head 128: 64 rows spill (72 regs)"),
        Row(256, 32, 16, 8, 1, "fp32 FMA dot at head 256: 32 x 16 (116 regs)"),
    ),
    (80, "fp32"): (
        Row(32, 64, 32, 4, 2, "fp32 FMA dot: ptxas holds 8 warps at 80 regs and spills"),
        Row(64, 64, 32, 8, 2, "fp32 FMA dot, 8 warps (80 regs)"),
        Row(128, 32, 32, 8, 2, "fp32 FMA dot at head 128 (80 regs)"),
        Row(256, 32, 16, 4, 1, "fp32 FMA dot at head 256: 8 warps spill at 80 regs (168)"),
    ),
}
# Box-key (neighborhood) kernels: they compute each key's grid coordinates in the loop.
BOX_TABLE: dict[tuple[int, str], tuple[Row, ...]] = {
    (90, "half"): (
        Row(128, 64, 64, 8, 3, "64-row box, 8 warps for the key coordinates (190 regs)"),
        Row(256, 64, 32, 8, 2, "head 256: 32 keys a tile, 64 spill (200 regs)"),
    ),
    (80, "half"): (
        Row(128, 64, 64, 8, 3, "64-row box, 8 warps: 4 sit at the 255-register limit (190)"),
        Row(256, 64, 64, 8, 2, "head 256: 8 warps, 2 stages (186 regs)"),
    ),
    (90, "fp32"): (
        Row(32, 64, 32, 4, 2, "fp32 FMA dot: ptxas holds 8 warps at 80 regs and spills"),
        Row(64, 64, 32, 8, 2, "fp32 FMA dot on a 64-row box (203 regs)"),
        Row(128, 32, 16, 8, 2, "fp32 FMA dot at head 128: 32-row box"),
        Row(256, 32, 16, 8, 1, "fp32 FMA dot at head 256: 32-row box"),
    ),
    (80, "fp32"): (
        Row(32, 64, 32, 4, 2, "fp32 FMA dot: ptxas holds 8 warps at 80 regs and spills"),
        Row(64, 64, 32, 8, 2, "fp32 FMA dot on a 64-row box (128 regs)"),
        Row(128, 32, 16, 8, 2, "fp32 FMA dot at head 128: a 64-row box spills"),
        Row(256, 32, 16, 8, 1, "fp32 FMA dot at head 256: 32-row box (128 regs)"),
    ),
}
# Query boxes by rows and grid rank: near-square, so the key box around them stays small.
QUERY_BOXES = {
    (16, 2): (4, 4), (32, 2): (8, 4), (64, 2): (8, 8), (128, 2): (16, 8),
    (16, 3): (2, 2, 4), (32, 3): (2, 4, 4), (64, 3): (4, 4, 4), (128, 3): (4, 4, 8),
}  # fmt: skip


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one kernel, with the reason they were chosen."""

    block_p: str  # query rows ("128") or a query box on a grid ("8x8")
    block_m: int
    num_warps: int
    num_stages: int
    why: str = "given"

    def summary(self) -> str:
        """``p=128 m=64, 8 warps, 3 stages (why)``."""
        return (
            f"p={self.block_p} m={self.block_m}, {self.num_warps} warps, "
            f"{self.num_stages} stages ({self.why})"
        )


def padded(extent: int) -> int:
    """The block a head axis takes: the next power of two, at least 16 (``kernel.pad``)."""
    return max(16, 1 << max(0, math.ceil(math.log2(max(extent, 1)))))


def normalize_arch(arch: int) -> int:
    """The table's architecture for a compute capability: 90 for sm_90 and newer, 80 for
    sm_80 .. sm_89 (and older GPUs, which get Ampere's conservative choice)."""
    return 90 if arch >= 90 else 80


def choose_config(
    head_dims: tuple[int, ...], dtype: str, arch: int, *, query_axes: int = 1,
    box_keys: bool = False,
) -> KernelConfig:  # fmt: skip
    """The configuration for a kernel whose head axes have ``head_dims`` (E, F, ...),
    storing ``dtype`` (``float16``, ``bfloat16``, ``float32``), compiled for ``sm_<arch>``.

    ``query_axes`` > 1 (a query grid) picks a query box of the same rows; ``box_keys``
    (key boxes on a grid: neighborhood attention) uses the box-key table.
    """
    if dtype not in _BYTES:
        raise KernelError(f"dtype must be one of {', '.join(_BYTES)}, got {dtype!r}")
    if not head_dims:
        head_dims = (DEFAULT_HEAD_DIM,)
    pads = tuple(padded(d) for d in head_dims)
    head = max(pads)
    target = normalize_arch(arch)
    kind = "fp32" if dtype == "float32" else "half"
    table = BOX_TABLE if box_keys else TABLE
    row = next((r for r in table[(target, kind)] if head <= r.head), None)
    if row is None:
        raise KernelError(
            f"head dim {max(head_dims)} (padded {head}) is over 256: no kernel configuration "
            "holds its accumulator in registers"
        )
    rows = row.rows
    block_p = "x".join(str(n) for n in _query_box(rows, query_axes))
    stages = _fit_stages(row, rows, pads, dtype, target)
    why = row.why if stages == row.num_stages else f"{row.why}; {stages} stages fit in smem"
    return KernelConfig(block_p, row.block_m, row.num_warps, stages, why)


def _query_box(rows: int, axes: int) -> tuple[int, ...]:
    if axes == 1:
        return (rows,)
    if (rows, axes) not in QUERY_BOXES:
        raise KernelError(f"no {rows}-row query box on a grid of {axes} axes")
    return QUERY_BOXES[(rows, axes)]


def shared_estimate(rows: int, block_m: int, pads: tuple[int, ...], dtype: str, stages: int,
                    arch: int) -> int:  # fmt: skip
    """Bytes of shared memory Triton allocates, as measured: the Q tile (``rows x E_PAD``)
    plus a K and a V tile (``block_m x (E_PAD + F_PAD)``) per stage (one stage fewer on
    sm_80), plus an fp32 scores tile of scratch for layout conversions."""
    size = _BYTES[dtype]
    buffers = stages if arch >= 90 else max(1, stages - 1)
    head = max(pads)
    return size * (rows * head + buffers * block_m * sum(pads)) + 4 * rows * block_m


def _fit_stages(row: Row, rows: int, pads: tuple[int, ...], dtype: str, arch: int) -> int:
    """The row's stages, fewer where the estimate exceeds the shared memory limit."""
    stages = row.num_stages
    while (
        stages > 1
        and shared_estimate(rows, row.block_m, pads, dtype, stages, arch) > SHARED_LIMIT[arch]
    ):
        stages -= 1
    return stages
