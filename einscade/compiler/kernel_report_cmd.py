"""``einscade kernel-report``: compile a cascade's Triton kernel ahead of time for NVIDIA GPUs
(no GPU needed) and print what it costs on each.

einscade kernel-report causal --dtype fp16 --arch 90,80 --tile p=128,m=64
einscade kernel-report neighborhood_2d --grid 56x56 --kernel 7x7 --tile p=8x8,m=64

Per kernel and architecture: registers per thread, spills (stack + local memory bytes per
thread), shared memory against the architecture's limit, warps, tensor-core instructions
in the SASS (HGMMA on sm_90a, HMMA on sm_80) and the widths of global loads (``128b`` is a
vectorized tile load). Options after the name that are not listed here are builder options
of the built-in (``--causal``, ``--window 512``).
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError
from einscade.ir.scope import Scope

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_DEFAULT_BOX = {1: "128", 2: "8x8", 3: "4x4x4"}  # query tile by grid rank


def add_parser(subparsers) -> None:  # type: ignore[no-untyped-def]
    """Register ``kernel-report`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "kernel-report",
        help="compile a cascade's kernel for sm_90a / sm_80 and print registers, spills, "
        "shared memory, tensor-core instructions and load widths",
        allow_abbrev=False,  # builder options must not match ours by prefix
    )
    p.add_argument("target", help="a built-in name (see 'einscade list') or FILE.ecas")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="fp16")
    p.add_argument("--arch", default="90,80", help="comma-separated: 90 (sm_90a), 80 (sm_80)")
    p.add_argument(
        "--tile", default=None, metavar="p=128,m=64",
        help="query tile (a box on a grid: p=8x8) and key tile; default: the configuration "
        "chosen for the head dims, dtype and arch (einscade/codegen/triton/config.py)",
    )  # fmt: skip
    p.add_argument("--schedule", choices=("auto", "block_sparse", "dense"), default="auto")
    p.add_argument("--warps", type=int, default=None, help="default: the chosen configuration's")
    p.add_argument("--stages", type=int, default=None, help="default: the chosen configuration's")
    p.add_argument("--head-dim", type=int, default=64, help="every head size (E, F, ...)")
    p.add_argument(
        "--head-dims", default=None, metavar="E=192,F=128",
        help="head sizes by symbol, for unequal QK and V head dims (overrides --head-dim)",
    )  # fmt: skip
    p.set_defaults(handler=run)


def parse_archs(text: str) -> list[int]:
    """``90,80`` or ``sm_90a,sm_80`` -> [90, 80]."""
    archs = []
    for part in text.split(","):
        digits = part.strip().lower().removeprefix("sm_").removesuffix("a")
        if not digits.isdigit() or int(digits) < 70:
            raise EinscadeError(f"--arch expects numbers like 90,80 (sm_90a, sm_80), got {part!r}")
        archs.append(int(digits))
    return archs


def parse_tile(text: str | None, cascade: Cascade) -> tuple[str, int]:
    """``p=8x8,m=64`` -> ("8x8", 64); defaults by the query rank's grid."""
    axes = Scope(cascade).grids.get("p", ("p",))
    tile = {"p": _DEFAULT_BOX.get(len(axes), "128"), "m": "64"}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        valid = value and all(v.isdigit() for v in value.split("x"))
        if name not in tile or not valid or (name == "m" and not value.isdigit()):
            raise EinscadeError(f"--tile expects p=N or p=AxB and m=N, got {part!r}")
        tile[name] = value
    return tile["p"], int(tile["m"])


def parse_head_dims(text: str | None, default: int) -> dict[str, int]:
    """``E=192,F=128`` -> {"E": 192, "F": 128}; without it every head size is ``default``."""
    if not text:
        return {"E": default, "F": default}
    found = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name.strip() or not value.strip().isdigit():
            raise EinscadeError(f"--head-dims expects E=192,F=128, got {part!r}")
        found[name.strip()] = int(value)
    return found


def _compile(kernel, arch: int):  # type: ignore[no-untyped-def]
    from einscade.codegen.triton import compile_for_gpu

    try:
        return compile_for_gpu(kernel, arch)  # the head dims the kernel was built for
    except EinscadeError:
        raise
    except Exception as error:  # Triton's compile errors: name the kernel and the target
        first = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        message = f"compiling {kernel.source.name} for sm_{arch} failed: {first}"
        raise EinscadeError(message) from error


def run(args: argparse.Namespace, rest: list[str], console: Console) -> None:
    """Build the kernel, compile it for each architecture, print the table."""
    from einscade.codegen.triton import build_kernel, kernel_report
    from einscade.codegen.triton.report import SHARED_LIMIT
    from einscade.compiler.cli import load_target, parse_builder_options

    cascade, _ = load_target(args.target, parse_builder_options(rest))
    archs = parse_archs(args.arch)
    heads = parse_head_dims(args.head_dims, args.head_dim)
    tile = {}
    if args.tile:
        tile = dict(zip(("block_p", "block_m"), parse_tile(args.tile, cascade), strict=True))
    given = {"num_warps": args.warps, "num_stages": args.stages, **tile}
    given = {k: v for k, v in given.items() if v is not None}
    kernels = {
        arch: build_kernel(cascade, dtype=_DTYPES[args.dtype], schedule=args.schedule,
                           head_dims=heads, arch=arch, **given)
        for arch in archs
    }  # fmt: skip
    first = kernels[archs[0]]
    table = Table(
        title=f"{first.source.name} ({args.dtype}, {first.options.schedule})",
        caption=f"head dims {', '.join(f'{k}={v}' for k, v in heads.items())}; spills in "
        "bytes per thread; config: tiles, warps, stages chosen per arch (or given)",
        title_justify="left",
        caption_justify="left",
    )
    for column in ("arch", "registers", "spills (B)", "shared (KiB)", "tensor cores",
                   "global loads", "compile (s)", "config"):  # fmt: skip
        table.add_column(
            column, justify="left" if column in ("arch", "tensor cores", "config") else "right"
        )
    for arch in archs:
        kernel = kernels[arch]
        start = time.perf_counter()
        compiled = _compile(kernel, arch)
        report = kernel_report(compiled, arch)
        seconds = time.perf_counter() - start
        limit = SHARED_LIMIT.get(arch)
        mma = ", ".join(f"{k} x{v}" for k, v in sorted(report.tensor_core.items()))
        expect_mma = args.dtype != "fp32"
        table.add_row(
            f"sm_{arch}{'a' if arch == 90 else ''}",
            str(report.registers),
            _flag(str(report.spill_bytes), report.spill_bytes > 0),
            _flag(
                f"{report.shared_bytes / 1024:.1f} / {limit // 1024 if limit else '?'}",
                limit is not None and report.shared_bytes > limit,
            ),
            _flag(mma or "none", expect_mma and not mma),
            report.loads_summary(),
            f"{seconds:.1f}",
            kernel.options.config.summary(),
        )  # fmt: skip
    console.print(table)


def _flag(text: str, bad: bool) -> str:
    """Red where the value is a problem (spills, too much shared memory, no tensor cores)."""
    return f"[bold red]{text}[/]" if bad else text
