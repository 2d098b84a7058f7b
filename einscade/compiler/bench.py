"""``einscade bench VERB``: benchmarks, one verb per module.

A verb module has ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args, console)``;
adding a benchmark is one entry in :data:`VERBS`. Modules are imported when the parser is
built, so they keep heavy imports (FlexAttention, torch.compile) inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib

from rich.console import Console

from einscade.ir.errors import EinscadeError

VERBS: dict[str, str] = {
    "layouts": "einscade.compiler.bench_layouts",
    "cpu": "einscade.compiler.bench_cpu",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``bench`` command and one sub-command per verb of :data:`VERBS`."""
    bench = subparsers.add_parser("bench", help="run a benchmark (see 'einscade bench -h')")
    verbs = bench.add_subparsers(dest="bench_verb", required=True, metavar="VERB")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        parser = verbs.add_parser(verb, help=module.HELP, description=module.__doc__)
        module.add_arguments(parser)
        parser.set_defaults(bench_run=module.run)
    bench.set_defaults(handler=run)


def run(args: argparse.Namespace, rest: list[str], console: Console) -> None:
    if rest:
        raise EinscadeError(f"bench {args.bench_verb}: unexpected arguments {' '.join(rest)}")
    args.bench_run(args, console)
