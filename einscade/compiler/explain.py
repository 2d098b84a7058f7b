"""``einscade explain``: what the compiler does with a cascade, as a report folder.

    einscade explain neighborhood_2d --grid 56x56 --kernel 7x7 --out einscade-report
    einscade explain my_variant.ecas --size P=2048 --size M=2048

runs the default pipeline plus tiling on the cascade and writes to ``--out``
(default ``einscade-report``):

    index.html         the report: open it in a browser (relative links only)
    report.json        the same facts as data
    ir/00-input.ecas   the IR before and after each pass (01-defer-div.ecas, ...) and
    ir/repro.py        a script that re-runs the pipeline and checks the last file
    kernel.py          the generated Triton kernel (fp16 storage)
    block-map.png      the chosen block layout: query tiles x key tiles, empty/partial/full
    mask.png           the keys of one query on its grid
    dataflow-input.png, dataflow-final.png   the cascade before and after the passes

A step that cannot be done (no attention mask between ``p`` and ``m``, a pass that declines
to tile, a kernel the code generator does not support) is reported in its section with the
reason; the rest of the report is still written.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from einscade.compiler.pipeline import DEFAULT_PIPELINE, PassFailure, PipelineResult, run_pipeline
from einscade.compiler.report import dataflow, html, pictures
from einscade.compiler.report.layouts import LayoutReport, layout_report
from einscade.compiler.report.summary import pass_count_facts, statement_facts, work_facts
from einscade.ir import print_cascade
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError
from einscade.ir.scope import Scope
from einscade.passes.analysis.pass_count import pass_count
from einscade.passes.analysis.shapes import resolve_sizes

# Query tiles when there is no mask to choose a layout for (as the default rule would).
_FALLBACK_TILE = "tile{p=128,m=64}"
# Files a report writes at the top of its folder; a rerun removes them first.
_OWN_FILES = (
    "index.html",
    "report.json",
    "kernel.py",
    "block-map.png",
    "mask.png",
    "dataflow-input.png",
    "dataflow-input.dot",
    "dataflow-final.png",
    "dataflow-final.dot",
)


@dataclass(frozen=True, slots=True)
class Stage:
    """The pipeline run of a report: the passes that ran and the tiling they included."""

    result: PipelineResult
    fused_index: int  # records[:fused_index] are the default pipeline's passes
    tile_error: str | None


def explain(
    cascade: Cascade,
    sizes: dict[str, int],
    out: str | Path,
    *,
    command: str = "",
    use_dot: bool | None = None,
) -> Path:
    """Write the report of ``cascade`` at example ``sizes`` into ``out``; return the path of
    its ``index.html``. ``use_dot`` picks the graph renderer (None: graphviz if on PATH)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name in _OWN_FILES:
        (folder / name).unlink(missing_ok=True)
    sizes = resolve_sizes(cascade, sizes)
    layout, layout_error = _layout(cascade, sizes)
    tile = layout.tile_spec if layout is not None else _FALLBACK_TILE
    stage = _run_passes(cascade, tile, folder / "ir")
    facts = {
        "title": cascade.name,
        "command": command,
        "sizes": {k: sizes[k] for k in sorted(sizes) if k in Scope(cascade).sizes},
        "statements": statement_facts(cascade),
        "pipeline": _pipeline_facts(cascade, stage),
        "ir": {"input": print_cascade(cascade), "final": print_cascade(stage.result.cascade)},
        "pass_count": _pass_count_facts(cascade, stage),
        "work": _work(cascade, sizes),
        "layout": _layout_facts(layout, layout_error),
        "kernel": _kernel(stage, folder),
        "pictures": _pictures(cascade, stage, layout, folder, use_dot),
    }
    (folder / "report.json").write_text(json.dumps(facts, indent=2) + "\n")
    index = folder / "index.html"
    index.write_text(html.render(facts))
    return index


# -- gathering ---------------------------------------------------------------------------------


def _layout(cascade: Cascade, sizes: dict[str, int]) -> tuple[LayoutReport | None, str | None]:
    try:
        return layout_report(cascade, sizes), None
    except (ValueError, EinscadeError) as error:
        return None, str(error).splitlines()[0]


def _run_passes(cascade: Cascade, tile: str, dump: Path) -> Stage:
    """The default pipeline then ``tile`` and ``dce``, dumped into ``dump``. If tiling
    fails, its failure stays in the dump and the default pipeline's result is reported."""
    fused = len(DEFAULT_PIPELINE.split(","))
    try:
        result = run_pipeline(cascade, f"{DEFAULT_PIPELINE},{tile},dce", dump_dir=dump, debug=0)
        return Stage(result, fused, None)
    except PassFailure as failure:
        if failure.pass_name != "tile":
            raise
        result = run_pipeline(cascade, DEFAULT_PIPELINE, dump_dir="", debug=0)
        return Stage(result, fused, failure.summary)


def _softmax_rank(cascade: Cascade) -> str | None:
    from einscade.compiler.cli import softmax_rank

    return softmax_rank(cascade)


def _pipeline_facts(cascade: Cascade, stage: Stage) -> dict[str, object]:
    rank = _softmax_rank(cascade)
    steps = []
    for index, record in enumerate(stage.result.records, start=1):
        passes = None if rank is None else pass_count(record.cascade, rank).passes
        steps.append(
            {
                "index": index,
                "name": record.name,
                "spec": record.spec,
                "ms": round(record.seconds * 1e3, 2),
                "changed": record.changed,
                "rewrites": record.rewrites,
                "passes": passes,
                "stage": "default" if index <= stage.fused_index else "tiling",
                "file": f"ir/{index:02d}-{record.name}.ecas",
                "text": print_cascade(record.cascade),
                "notes": [{"kind": n.kind, "message": n.message} for n in record.notes],
            }
        )
    return {
        "spec": stage.result.spec,
        "default": DEFAULT_PIPELINE,
        "input_file": "ir/00-input.ecas",
        "repro": "ir/repro.py",
        "tile_error": stage.tile_error,
        "steps": steps,
    }


def _pass_count_facts(cascade: Cascade, stage: Stage) -> dict[str, object] | None:
    """Passes over the softmax rank: input, after the default pipeline, after tiling."""
    rank = _softmax_rank(cascade)
    if rank is None:
        return None
    records = stage.result.records
    stages = [("input", cascade)]
    if stage.fused_index:
        stages.append(("after fusion", records[stage.fused_index - 1].cascade))
    if len(records) > stage.fused_index:
        stages.append(("after tiling", records[-1].cascade))
    rows = [{"stage": name, **pass_count_facts(pass_count(c, rank))} for name, c in stages]
    return {"rank": rank, "stages": rows}


def _work(cascade: Cascade, sizes: dict[str, int]) -> dict[str, object]:
    try:
        return work_facts(cascade, sizes)
    except EinscadeError as error:
        return {"error": str(error)}


def _layout_facts(layout: LayoutReport | None, error: str | None) -> dict[str, object]:
    if layout is None:
        return {"error": error}
    rows = []
    for k, candidate in enumerate(layout.candidates):
        rows.append(
            {
                "label": candidate.label,
                "chosen": k == layout.chosen_index,
                "key_mode": candidate.key_mode,
                "empty": candidate.empty,
                "partial": candidate.partial,
                "full": candidate.full,
                "computed": candidate.computed,
                "ratio": candidate.computed / layout.useful if layout.useful else None,
                "time_us": candidate.time_us,
                "limit": candidate.limit,
                "estimate": candidate.estimate,
                "tile_spec": candidate.tile_spec,
            }
        )
    return {
        "chooser": layout.chooser,
        "chosen": layout.chosen.label,
        "tile_spec": layout.tile_spec,
        "notes": list(layout.notes),
        "query_tiles": len(layout.layout.key_tiles),
        "useful": layout.useful,
        "dense": layout.dense,
        "candidates": rows,
    }


def _kernel(stage: Stage, folder: Path) -> dict[str, object]:
    """The fp16 Triton kernel of the final cascade, or why there is none."""
    if stage.tile_error is not None:
        return {"error": f"not generated: tiling failed ({stage.tile_error})"}
    from einscade.codegen.triton.compile import build_kernel

    try:
        kernel = build_kernel(stage.result.cascade, dtype="float16")
    except Exception as error:  # the code generator's limits: report them, keep the report
        return {"error": f"not generated: {type(error).__name__}: {str(error).splitlines()[0]}"}
    (folder / "kernel.py").write_text(kernel.text)
    return {
        "file": "kernel.py",
        "name": kernel.source.name,
        "dtype": kernel.options.dtype,
        "lines": kernel.text.count("\n"),
        "schedule": kernel.source.schedule,
        "text": kernel.text,
    }


def _pictures(
    cascade: Cascade,
    stage: Stage,
    layout: LayoutReport | None,
    folder: Path,
    use_dot: bool | None,
) -> dict[str, object]:
    """Block map and mask of the chosen layout, dataflow graphs before and after."""
    found: dict[str, object] = {}
    if layout is not None:
        chosen = layout.chosen
        drawn = pictures.block_map(layout.layout, folder / "block-map.png", chosen.label)
        block = drawn["block"]
        caption = f"{drawn['rows']} query tiles x {drawn['columns']} {drawn['columns_are']}"
        if block != (1, 1):
            caption += f", drawn in cells of {block[0]}x{block[1]} (partial if mixed)"
        if chosen.folds is not None:
            caption += ", tokens in the permuted (folded) order"
        found["block_map"] = {"file": "block-map.png", "caption": caption + "."}
        caption = pictures.query_mask(layout.bound, folder / "mask.png")
        found["mask"] = {"file": "mask.png", "caption": caption}
    rank = _softmax_rank(cascade)
    for key, graph_of, title in (
        ("input", cascade, "input"),
        ("final", stage.result.cascade, "after the passes"),
    ):
        report = None if rank is None else pass_count(graph_of, rank)
        graph = dataflow.dataflow_graph(graph_of, report)
        path = folder / f"dataflow-{key}.png"
        renderer = dataflow.draw_dataflow(graph, path, f"@{graph_of.name}: {title}", use_dot)
        found[f"dataflow_{key}"] = {"file": path.name, "renderer": renderer}
    return found


# -- command line ------------------------------------------------------------------------------


def add_parser(sub) -> None:  # type: ignore[no-untyped-def]
    """``einscade explain NAME|FILE.ecas [builder options] [--size N=V] [--out DIR]``."""
    cmd = sub.add_parser(
        "explain",
        help="write a report folder: IR per pass, pass counts, layout, kernel, pictures",
        allow_abbrev=False,  # builder options must not match --out or --size by prefix
    )
    cmd.add_argument("target", help="a built-in name (see 'einscade list') or FILE.ecas")
    cmd.add_argument("--size", action="append", default=[], metavar="NAME=INT")
    cmd.add_argument(
        "--out",
        default="einscade-report",
        metavar="DIR",
        help="the report folder (default: einscade-report)",
    )
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace, rest: list[str], console: Console) -> None:
    """Build the report and print where it is, with the headline numbers."""
    from einscade.compiler.cli import load_target, parse_builder_options, parse_sizes

    cascade, sizes = load_target(args.target, parse_builder_options(rest))
    sizes.update(parse_sizes(args.size))
    words = ["einscade", "explain", args.target, *rest]
    words += [f"--size {s}" for s in args.size] + ["--out", args.out]
    try:
        index = explain(cascade, sizes, args.out, command=" ".join(words))
    except PassFailure as failure:
        raise EinscadeError(failure.summary) from failure
    facts = json.loads((index.parent / "report.json").read_text())
    for line in _headline(facts):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"report: {index}", highlight=False, markup=False, soft_wrap=True)


def _headline(facts: dict) -> list[str]:  # type: ignore[type-arg]
    """Three lines for the terminal: passes, layout, kernel."""
    lines = []
    counts = facts["pass_count"]
    if counts is not None:
        numbers = ", ".join(f"{s['passes']} {s['stage']}" for s in counts["stages"])
        lines.append(f"passes over {counts['rank']}: {numbers}")
    layout = facts["layout"]
    lines.append(
        f"layout: {layout['chosen']}" if "chosen" in layout else f"layout: {layout['error']}"
    )
    kernel = facts["kernel"]
    lines.append(
        f"kernel: {kernel['file']} ({kernel['lines']} lines)"
        if "file" in kernel
        else f"kernel: {kernel['error']}"
    )
    return lines
