"""The ``einscade`` command line.

einscade show NAME [--grid 56x56 --kernel 7x7 ...] [--size P=1024 ...] [--format text|json]
einscade show FILE.ecas [--size ...]
einscade check FILE.ecas
einscade opt FILE.ecas|NAME [builder options] [--pipeline SPEC] [--dump-dir D] [--debug N]
einscade list
einscade onnx inspect IN.onnx
einscade onnx rewrite IN.onnx -o OUT.onnx [--to function|onnx-attention|ort] [--report]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from einscade.ir import load, print_cascade
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError
from einscade.ir.scope import Scope
from einscade.passes.analysis.pass_count import pass_count
from einscade.passes.analysis.shapes import resolve_sizes, statement_work

_DEFAULT_SIZES = {"B": 1, "H": 8, "HK": 8, "P": 1024, "M": 1024, "N": 1024, "E": 64, "F": 64}


def parse_option_value(text: str) -> object:
    """``56x56`` -> (56, 56); ``true``/``false`` -> bool; numbers; else the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "x" in lowered and all(part.isdigit() for part in lowered.split("x")):
        return tuple(int(part) for part in lowered.split("x"))
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_builder_options(tokens: list[str]) -> dict[str, object]:
    """``--kernel 7x7 --causal`` -> {"kernel": (7, 7), "causal": True}."""
    options: dict[str, object] = {}
    k = 0
    while k < len(tokens):
        token = tokens[k]
        if not token.startswith("--"):
            raise EinscadeError(f"expected an option like --kernel, got {token!r}")
        key = token[2:].replace("-", "_")
        if k + 1 < len(tokens) and not tokens[k + 1].startswith("--"):
            options[key] = parse_option_value(tokens[k + 1])
            k += 2
        else:
            options[key] = True
            k += 1
    return options


def parse_sizes(pairs: list[str]) -> dict[str, int]:
    sizes = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not value.isdigit():
            raise EinscadeError(f"--size expects NAME=INT, got {pair!r}")
        sizes[name] = int(value)
    return sizes


def load_target(target: str, options: dict[str, object]) -> tuple[Cascade, dict[str, int]]:
    """A cascade from a file path or a built-in name, with example sizes."""
    if target.endswith(".ecas") or Path(target).is_file():
        if options:
            raise EinscadeError("builder options apply to built-in names, not to .ecas files")
        return load(target), dict(_DEFAULT_SIZES)
    from einscade.frontends.library import builtin

    entry = builtin(target)
    return entry.build(**options), {**_DEFAULT_SIZES, **entry.sizes}


def softmax_rank(cascade: Cascade) -> str | None:
    """The rank whose passes we count: ``m`` if present, else the first max-reduced rank."""
    scope = Scope(cascade)
    if "m" in scope.ranks:
        return "m"
    for stmt in cascade.einsums():
        if stmt.reduce is not None and stmt.reduce.op == "max":
            return stmt.reduce.ranks[0]
    return None


def show(cascade: Cascade, sizes: dict[str, int], console: Console) -> None:
    console.file.write(print_cascade(cascade))
    rank = softmax_rank(cascade)
    if rank is not None:
        report = pass_count(cascade, rank)
        live = ", ".join(
            f"{t.name} (pass {t.produced_in} -> {', '.join(map(str, t.read_in))})"
            for t in report.live_across
        )
        console.print(f"\npasses over {rank}: {report.passes}", highlight=False)
        console.print(f"live across passes: {live or 'none'}", highlight=False)
    table = Table(title="shapes and dense work", title_justify="left")
    for column in ("tensor", "ranks", "shape", "points", "flops", "masked"):
        table.add_column(column, justify="right" if column in ("points", "flops") else "left")
    rows = statement_work(cascade, sizes)
    for row in rows:
        shape = " x ".join(map(str, row.shape)) or "scalar"
        table.add_row(
            row.target, ", ".join(row.ranks), shape, f"{row.points:,}", f"{row.flops:,}",
            "yes" if row.masked else "",
        )  # fmt: skip
    console.print(table)
    total = sum(r.flops for r in rows)
    resolved = resolve_sizes(cascade, sizes)
    used = ", ".join(f"{k}={v}" for k, v in sorted(resolved.items()) if k in Scope(cascade).sizes)
    console.print(f"total dense work: {total:,} flops at {used}", highlight=False)


def show_json(cascade: Cascade, sizes: dict[str, int]) -> None:
    """``einscade show --format json``: see ``report.summary.cascade_document``."""
    from einscade.compiler.report.summary import cascade_document

    document = cascade_document(cascade, sizes, softmax_rank(cascade))
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


# Subcommands that live in their own modules: each has ``add_parser(subparsers)``, which
# sets ``handler=run`` with ``run(args, rest, console)`` on its parser.
COMMAND_MODULES: tuple[str, ...] = (
    "einscade.compiler.bench",
    "einscade.frontends.onnx.commands",
    "einscade.compiler.explain",
    "einscade.compiler.kernel_report_cmd",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="einscade", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show_cmd = sub.add_parser("show", help="print a cascade, its pass count and work summary")
    show_cmd.add_argument("target", help="a built-in name (see 'einscade list') or FILE.ecas")
    show_cmd.add_argument("--size", action="append", default=[], metavar="NAME=INT")
    show_cmd.add_argument(
        "--format", choices=("text", "json"), default="text",
        help="json: the cascade text, statements, pass count and work table as one document",
    )  # fmt: skip
    check_cmd = sub.add_parser("check", help="verify an .ecas file")
    check_cmd.add_argument("file")
    opt_cmd = sub.add_parser(
        "opt",
        help="run a pass pipeline and print the resulting cascade",
        allow_abbrev=False,  # builder options such as --d must not match --dump-dir
    )
    opt_cmd.add_argument("target", help="a built-in name (see 'einscade list') or FILE.ecas")
    opt_cmd.add_argument(
        "--pipeline", default=None, metavar="SPEC",
        help="e.g. 'defer-div,online-softmax,dce' (the default)",
    )  # fmt: skip
    opt_cmd.add_argument("--dump-dir", default=None, metavar="D", help="per-pass IR and repro.py")
    opt_cmd.add_argument("--debug", type=int, default=None, metavar="N", help="EINSCADE_DEBUG")
    sub.add_parser("list", help="list the built-in cascades")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def optimize(args: argparse.Namespace, rest: list[str]) -> str:
    """``einscade opt``: the optimized cascade as text; errors become one-line EinscadeErrors."""
    from einscade.compiler.pipeline import DEFAULT_PIPELINE, PassFailure, run_pipeline

    try:
        cascade, _ = load_target(args.target, parse_builder_options(rest))
        spec = args.pipeline or DEFAULT_PIPELINE
        result = run_pipeline(cascade, spec, dump_dir=args.dump_dir, debug=args.debug)
    except PassFailure as failure:
        raise EinscadeError(failure.summary) from failure
    except EinscadeError as error:
        # Located errors add the source line and a caret; the first line names the place.
        raise EinscadeError(str(error).splitlines()[0]) from error
    rank = softmax_rank(cascade)
    if rank is not None:
        before, after = pass_count(cascade, rank).passes, pass_count(result.cascade, rank).passes
        print(f"# {spec}: passes over {rank}: {before} -> {after}", file=sys.stderr)
    return print_cascade(result.cascade)


def main(argv: list[str] | None = None) -> int:
    args, rest = _parser().parse_known_args(argv)
    console = Console(width=120)
    try:
        if args.command == "show":
            options = parse_builder_options(rest)
            cascade, sizes = load_target(args.target, options)
            sizes.update(parse_sizes(args.size))
            if args.format == "json":
                show_json(cascade, sizes)
            else:
                show(cascade, sizes, console)
        elif args.command == "check":
            if rest:
                raise EinscadeError(f"unexpected arguments {' '.join(rest)}")
            load(args.file)
            print(f"{args.file}: ok")
        elif args.command == "opt":
            sys.stdout.write(optimize(args, rest))
        elif hasattr(args, "handler"):
            args.handler(args, rest, console)
        else:
            from einscade.frontends.library import BUILTINS

            for name, entry in sorted(BUILTINS.items()):
                print(f"{name:18} {entry.summary}")
    except (EinscadeError, OSError) as error:
        print(f"einscade: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
