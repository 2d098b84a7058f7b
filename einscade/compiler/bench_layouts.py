"""Block layouts against FlexAttention's ``create_block_mask``, side by side in one run.

For each mask: the ideal density (allowed pairs over all pairs); the work computed per
useful pair by the layout ``choose_layout`` picks (padding counted) and by FlexAttention's
BlockMask (visited blocks x block area / allowed pairs, at 128 x 128 and 64 x 64 blocks);
full and partial tiles of both; and the analysis time of both: ours (``choose_layout``,
estimates and final classification), eager ``create_block_mask`` and, unless
``--no-compile``, ``torch.compile(create_block_mask)`` once warm (first calls reported
apart), both for one batch and head (``B = H = 1``; with ``None`` the compiled form runs
about 5x slower on this machine). Times are the best of a few runs after
``gc.collect()``; the first call is its own column. The FlexAttention mask_mods are written
from the same formulas as our builders and checked against our mask on every key of a
sample of queries before anything is timed.
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError
from einscade.passes.analysis.blocks import count_allowed
from einscade.passes.analysis.layout import LayoutChoice, choose_layout
from einscade.passes.analysis.masks import BoundMask, attention_mask

HELP = "block layouts and analysis time against FlexAttention's create_block_mask"
TIME_FACTOR = 10.0  # ours must be this much faster than eager create_block_mask
BIG = "na3d-1m"  # the 64 x 128 x 128 line: ours only


@dataclass(frozen=True)
class Row:
    """One benchmark mask: our cascade (with sizes and lookups), FlexAttention's mask_mod,
    the work-ratio target."""

    key: str
    title: str
    build: Callable[[], tuple[Cascade, dict[str, int] | None, dict[str, torch.Tensor] | None]]
    mask_mod: Callable[[], Callable]
    tokens: int
    target: float


def _documents(n: int = 8192, count: int = 8, seed: int = 0) -> torch.Tensor:
    """Document ids of ``count`` documents at random (seeded) boundaries."""
    generator = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(n - 1, generator=generator)[: count - 1] + 1
    return torch.bucketize(torch.arange(n), cuts.sort().values, right=True)


def natten_mod(grid, kernel, stride=1, dilation=1):  # type: ignore[no-untyped-def]
    """NATTEN 0.21 windows (docs: neighborhood.md) as a FlexAttention mask_mod."""
    n = len(grid)
    per_axis = [(v if isinstance(v, tuple) else (v,) * n) for v in (kernel, stride, dilation)]

    def mod(b, h, q, kv):  # type: ignore[no-untyped-def]
        ok = None
        for axis, length in enumerate(grid):
            k, s, d = (values[axis] for values in per_axis)
            step = math.prod(grid[axis + 1 :])
            x, xk = (q // step) % length, (kv // step) % length
            group, i, j = x % d, x // d, xk // d
            group_len = (length - group + d - 1) // d
            lead = torch.minimum((i // s) * s + s // 2, group_len - 1)
            right = k - 1 - k // 2
            start = torch.clamp(lead - k // 2, min=0) + torch.clamp(
                group_len - lead - right - 1, max=0
            )
            term = (xk % d == group) & (start <= j) & (j < start + k)
            ok = term if ok is None else ok & term
        return ok

    return mod


def _axes_mod(grid, term):  # type: ignore[no-untyped-def]
    """A mask_mod that is the conjunction of ``term(axis, x, xk)`` over the grid's axes."""

    def mod(b, h, q, kv):  # type: ignore[no-untyped-def]
        ok = None
        for axis, length in enumerate(grid):
            step = math.prod(grid[axis + 1 :])
            found = term(axis, (q // step) % length, (kv // step) % length)
            ok = found if ok is None else ok & found
        return ok

    return mod


def halo_mod(grid, block, halo):  # type: ignore[no-untyped-def]
    def term(axis, x, xk):  # type: ignore[no-untyped-def]
        start = x // block * block - halo
        return (start <= xk) & (xk < start + block + 2 * halo)

    return _axes_mod(grid, term)


def maxvit_grid_mod(grid, size):  # type: ignore[no-untyped-def]
    return _axes_mod(
        grid, lambda axis, x, xk: x % (grid[axis] // size) == xk % (grid[axis] // size)
    )


def _docs_mod():  # type: ignore[no-untyped-def]
    doc = _documents()
    return lambda b, h, q, kv: doc[q] == doc[kv]


def _seq(n: int) -> dict[str, int]:
    return {"P": n, "M": n}


ROWS = (
    Row("na2d", "2-D NA 56x56, k 7x7",
        lambda: (neighborhood_attention((56, 56), 7), None, None),
        lambda: natten_mod((56, 56), 7), 3136, 4.5),
    Row("na2d-dil2", "2-D NA 64x64, k 13x13, dilation 2",
        lambda: (neighborhood_attention((64, 64), 13, dilation=2), None, None),
        lambda: natten_mod((64, 64), 13, 1, 2), 4096, 3.0),
    Row("blocked3d", "3-D blocked 16x32x32, 4x4x4 windows",
        lambda: (neighborhood_attention((16, 32, 32), 4, stride=4), None, None),
        lambda: natten_mod((16, 32, 32), 4, 4), 16384, 1.05),
    Row("gna2d", "2-D strided GNA 80x80, k 40, s 16",
        lambda: (neighborhood_attention((80, 80), 40, stride=16), None, None),
        lambda: natten_mod((80, 80), 40, 16), 6400, 1.05),
    Row("causal", "causal, N=8192",
        lambda: (softmax_attention(causal=True), _seq(8192), None),
        lambda: (lambda b, h, q, kv: kv <= q), 8192, 1.02),
    Row("sliding-sinks", "causal sliding window 512 + 4 sinks, N=8192",
        lambda: (softmax_attention(causal=True, window=(512, 0), sinks=4), _seq(8192), None),
        lambda: (lambda b, h, q, kv: ((kv <= q) & (kv >= q - 512)) | (kv < 4)), 8192, 1.15),
    Row("maxvit-grid", "MaxViT grid 56x56, size 7",
        lambda: (maxvit_attention((56, 56), 7, "grid"), None, None),
        lambda: maxvit_grid_mod((56, 56), 7), 3136, 1.8),
    Row("halo", "HaloNet 64x64, block 8, halo 3",
        lambda: (halo_attention((64, 64), 8, 3), None, None),
        lambda: halo_mod((64, 64), 8, 3), 4096, 1.25),
    Row("documents", "documents: 8 random, N=8192",
        lambda: (softmax_attention(documents=True), _seq(8192), {"doc": _documents()[None]}),
        _docs_mod, 8192, 1.1),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    keys = ", ".join([r.key for r in ROWS] + [BIG])
    parser.add_argument("--rows", default=None, metavar="KEYS", help=f"comma-separated: {keys}")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip torch.compile'd create_block_mask (its first call takes 6-15 s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one warm run each, no 64 x 64 FlexAttention blocks, no 1M-token line",
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")


def run(args: argparse.Namespace, console: Console) -> None:
    keys = [k.strip() for k in args.rows.split(",")] if args.rows else None
    known = {r.key for r in ROWS} | {BIG}
    for key in keys or ():
        if key not in known:
            raise EinscadeError(f"bench layouts: unknown row {key!r}; rows: {', '.join(known)}")
    big = (BIG in keys) if keys else not args.quick
    selected = [r for r in ROWS if keys is None or r.key in keys]
    repeat = 1 if args.quick else 3
    big_line = _big_line() if big else None  # first: before FlexAttention grows the heap
    results = [measure(row, repeat, not args.no_compile, not args.quick) for row in selected]
    if args.markdown:
        console.file.write(markdown(results, big_line))
    else:
        console.print(table(results))
        for line in layouts(results):
            console.print(line, highlight=False)
        if big_line:
            console.print(big_line, highlight=False)
    load = ", ".join(f"{x:.1f}" for x in _load())
    console.print(f"load average during the run: {load} (2 CPU threads)", highlight=False)


# -- measurement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    row: Row
    useful: int
    choice: LayoutChoice
    ours: tuple[float, float]  # (first call, best warm) seconds
    flex_eager: tuple[float, float]
    flex_compiled: tuple[float, float] | None
    flex_128: tuple[int, int]  # (full, partial) blocks
    flex_64: tuple[int, int] | None

    @property
    def ideal(self) -> float:
        return self.useful / self.row.tokens**2

    def flex_ratio(self, block: int) -> float | None:
        blocks = self.flex_128 if block == 128 else self.flex_64
        return None if blocks is None else sum(blocks) * block * block / self.useful

    @property
    def ratio(self) -> float:
        return self.choice.cost.computed_elements / self.useful

    @property
    def time_ok(self) -> bool:
        fast = self.ours[1] * TIME_FACTOR <= self.flex_eager[1]
        return fast and (self.flex_compiled is None or self.ours[1] < self.flex_compiled[1])


def measure(row: Row, repeat: int, compiled: bool, blocks_64: bool) -> Result:
    from torch.nn.attention.flex_attention import create_block_mask

    cascade, sizes, lookups = row.build()
    mask = attention_mask(cascade)
    mask_mod = row.mask_mod()
    bound = mask.bind(sizes, None, lookups)
    check_mask_mod(bound, mask_mod, row)
    # Warm calls that are cheap get more runs (up to WARM_RUNS within WARM_BUDGET_S), ours
    # and compiled FlexAttention alike: the best of more runs is robust to a busy machine.
    ours = timed(lambda: choose_layout(mask, sizes, None, lookups), max(repeat, 5), WARM_RUNS)
    choice = choose_layout(mask, sizes, None, lookups)
    useful = count_allowed(choice.layout, choice.bound)
    choice = choose_layout(mask, sizes, None, lookups, useful_elements=useful)
    n = row.tokens

    def eager(block: int = 128):  # type: ignore[no-untyped-def]
        return create_block_mask(mask_mod, 1, 1, n, n, device="cpu", BLOCK_SIZE=block)

    flex_eager = timed(eager, repeat)
    flex_compiled = None
    if compiled:
        # A fresh compile per row: dynamo's cache holds every earlier row's mask_mod, and
        # past 8 entries (or with dynamic shapes after a second length) it measures other code.
        torch._dynamo.reset()
        compiled_fn = torch.compile(create_block_mask)
        call = lambda: compiled_fn(mask_mod, 1, 1, n, n, device="cpu")  # noqa: E731
        flex_compiled = timed(call, max(repeat, 5), WARM_RUNS)
    flex_64 = _blocks(eager(64)) if blocks_64 else None
    return Result(row, useful, choice, ours, flex_eager, flex_compiled, _blocks(eager()), flex_64)


WARM_RUNS = 20
WARM_BUDGET_S = 1.0


def timed(fn: Callable[[], object], repeat: int, most: int = 0) -> tuple[float, float]:
    """(first call, best of the warm runs) in seconds, each after a garbage collection:
    ``repeat`` warm runs, then more up to ``most`` while they took under WARM_BUDGET_S."""
    times = []
    while len(times) < repeat + 1 or (len(times) < most + 1 and sum(times[1:]) < WARM_BUDGET_S):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:])


def _blocks(block_mask) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    full = int(block_mask.full_kv_num_blocks.sum())
    return full, int(block_mask.kv_num_blocks.sum())


def check_mask_mod(bound: BoundMask, mask_mod: Callable, row: Row, queries: int = 64) -> None:
    """Our mask equals ``mask_mod`` on every key of ``queries`` seeded random queries."""
    generator = torch.Generator().manual_seed(1)
    picked = torch.randperm(row.tokens, generator=generator)[:queries]
    keys = torch.arange(row.tokens)
    ours = bound.evaluate(picked, keys)
    zero = torch.zeros((), dtype=torch.long)
    theirs = mask_mod(zero, zero, picked[:, None], keys[None, :])
    if not torch.equal(ours, theirs.expand_as(ours)):
        bad = (ours != theirs).nonzero()[0].tolist()
        raise EinscadeError(f"bench layouts: the mask_mod of {row.key!r} differs from our mask at "
                            f"query {int(picked[bad[0]])}, key {bad[1]}")  # fmt: skip


def _big_line() -> str:
    """64 x 128 x 128 tokens, 7 x 7 x 7 neighborhood: ours only (FlexAttention's eager
    create_block_mask tries to allocate 1 TB here)."""
    mask = attention_mask(neighborhood_attention((64, 128, 128), 7))
    gc.collect()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    choice = choose_layout(mask)
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    gc.collect()
    tracemalloc.start()
    choose_layout(mask)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    verdict = "PASS" if seconds < 2.0 and peak < 1024 else "MISS"
    return (
        f"3-D NA 64x128x128 (1,048,576 tokens), k 7x7x7: analysed in {seconds:.2f} s "
        f"(target < 2 s), peak Python heap {peak:.0f} MiB, process RSS grew {grown:.0f} MiB "
        f"(target < 1 GB): {verdict}; layout {choice.describe()}, "
        f"{choice.cost.full_tiles} full / {choice.cost.partial_tiles} partial tiles, "
        f"computed / useful {choice.cost.computed_elements / (2**20 * 343):.2f}"
    )


def _load() -> tuple[float, float, float]:
    try:
        with open("/proc/loadavg") as handle:
            parts = handle.read().split()
        return float(parts[0]), float(parts[1]), float(parts[2])
    except OSError:
        return (math.nan,) * 3


# -- output ------------------------------------------------------------------------------

COLUMNS = ("row", "ideal", "ours c/u", "target", "", "FA c/u 128 / 64", "ours full / partial",
           "FA-128 full / partial", "ours ms (1st)", "FA eager ms (1st)",
           "FA compiled ms (1st)", "eager / ours", "time")  # fmt: skip
LEGEND = (
    "c/u: computed over useful (query, key) pairs, padding counted (ours: multiples of 16; "
    "FlexAttention: visited blocks x block area). ms: best warm run, first call in brackets. "
    f"time: ours {TIME_FACTOR:g}x faster than eager create_block_mask and faster than its "
    "compiled form warm."
)


def _ms(pair: tuple[float, float] | None) -> str:
    if pair is None:
        return "-"
    return f"{pair[1] * 1e3:.1f} ({pair[0] * 1e3:.0f})"


def cells(result: Result) -> list[str]:
    cost, flex64 = result.choice.cost, result.flex_ratio(64)
    ok = result.ratio <= result.row.target
    return [
        result.row.key,
        f"{result.ideal:.2%}",
        f"{result.ratio:.3f}",
        f"<= {result.row.target}",
        "PASS" if ok else "MISS",
        f"{result.flex_ratio(128):.2f} / " + ("-" if flex64 is None else f"{flex64:.2f}"),
        f"{cost.full_tiles} / {cost.partial_tiles}",
        f"{result.flex_128[0]} / {result.flex_128[1]}",
        _ms(result.ours),
        _ms(result.flex_eager),
        _ms(result.flex_compiled),
        f"{result.flex_eager[1] / result.ours[1]:.1f}x",
        "PASS" if result.time_ok else "MISS",
    ]


def table(results: list[Result]) -> Table:
    found = Table(title="block layouts: einscade vs FlexAttention create_block_mask",
                  title_justify="left", caption=LEGEND, caption_justify="left")  # fmt: skip
    for column in COLUMNS:
        found.add_column(column, justify="left" if column in ("row", "") else "right")
    for result in results:
        found.add_row(*cells(result))
    return found


def layouts(results: list[Result]) -> list[str]:
    """One line per row: the mask and the layout chosen for it."""
    return [
        f"{r.row.key}: {r.row.title}; layout {r.choice.describe()} "
        f"({r.choice.cost.bound}-bound, {r.choice.cost.time * 1e6:.2f} us per head modelled)"
        for r in results
    ]


def markdown(results: list[Result], big_line: str | None) -> str:
    lines = ["| " + " | ".join(c or "work" for c in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(cells(r)) + " |" for r in results]
    lines += ["", LEGEND, ""] + [f"- {line}" for line in layouts(results)]
    text = "\n".join(lines) + "\n"
    return text + (f"\n{big_line}\n" if big_line else "")
