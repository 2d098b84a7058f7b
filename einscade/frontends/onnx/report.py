"""Rich tables for ``einscade onnx inspect`` and ``einscade onnx rewrite --report``.

Every name from the model goes into a :class:`rich.text.Text`, never into markup: ONNX
names such as ``/m/encoder/layer.0/[bold]`` must print as they are.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import onnx_ir as ir
from rich.console import Console
from rich.table import Table
from rich.text import Text

from einscade.frontends.onnx.rewrite import DOMAIN, Decision
from einscade.frontends.onnx.sites import Discovery, Site
from einscade.frontends.onnx.validate import Comparison
from einscade.ir.printer import print_cascade


def op_counts(model: ir.Model) -> Counter[str]:
    """Node counts of the main graph by op; einscade calls counted by cascade family."""
    counts: Counter[str] = Counter()
    for node in model.graph:
        if node.domain == DOMAIN:
            counts[f"{DOMAIN}::{re.sub(r'_[0-9]+$', '', node.op_type)}"] += 1
        elif node.domain in ("", "ai.onnx"):
            counts[node.op_type] += 1
        else:
            counts[f"{node.domain}::{node.op_type}"] += 1
    return counts


def print_inspection(path: Path, model: ir.Model, found: Discovery, console: Console) -> None:
    """The site table, each site's details and cascade, then the Softmaxes left unmatched."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", "?"))
    summary = (
        f"{path}: {len(found.sites)} attention site(s), {len(found.misses)} unmatched "
        f"Softmax(es); opset {opset}, {len(model.graph)} nodes"
    )
    console.print(Text(summary))
    if found.sites:
        console.print(_site_table(found.sites))
    for site in found.sites:
        _print_site(site, console)
    if found.misses:
        console.print(_miss_table(found))


def _site_table(sites: tuple[Site, ...]) -> Table:
    table = Table(title="attention sites", title_justify="left")
    for column in ("#", "family", "where", "Q", "K", "V", "mask", "output", "scale"):
        table.add_column(column, overflow="fold")
    for site in sites:
        scale = "run time" if site.scale is None else f"{site.scale:.6g}"
        if site.family != "decomposed" and site.scale is None:
            scale = "1/sqrt(E)"
        table.add_row(
            str(site.index), site.family, Text(site.container), *(Text(x) for x in (
                site.q, site.k, site.v, _mask_cell(site), site.output)), scale,
        )  # fmt: skip
    return table


def _mask_cell(site: Site) -> str:
    if site.mask is None:
        return "-"
    return site.mask if site.mask_family is None else f"{site.mask} = {site.mask_family}"


def _print_site(site: Site, console: Console) -> None:
    console.print(Text(f"\nsite {site.index} ({site.family}, {site.container})", style="bold"))
    lines = [
        f"  nodes:  {', '.join(site.node_names)}",
        f"  shapes: {', '.join(f'{role} {shape}' for role, shape in site.shapes)}",
        f"  layout: {site.layout}",
        f"  scale:  {site.scale_form}" + ("" if site.scale is None else f" = {site.scale:.6g}"),
        f"  causal flag: {site.causal}, grouped KV heads: {site.kv_heads}, mask: {site.mask_form}",
    ]
    if site.mask_family is not None:
        lines.append(f"  mask structure: {site.mask_family} (verified element by element)")
    lines += [f"  note:   {note}" for note in site.notes]
    lines += [f"  not in the cascade: {what} (never rewritten)" for what in site.unsupported]
    console.print(Text("\n".join(lines)))
    console.file.write(_indent(print_cascade(site.cascade)))


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def _miss_table(found: Discovery) -> Table:
    table = Table(title="Softmax nodes not matched", title_justify="left")
    for column in ("where", "softmax", "why not", "at"):
        table.add_column(column, overflow="fold")
    for miss in found.misses:
        table.add_row(*(Text(x) for x in (miss.container, miss.node, miss.reason,
                                          ", ".join(miss.near) or "-")))  # fmt: skip
    return table


def print_rewrite_report(
    before: Counter[str],
    after: Counter[str],
    decisions: tuple[Decision, ...],
    comparison: Comparison,
    console: Console,
) -> None:
    """Ops before/after by type, each site's decision, and the output differences."""
    console.print(_ops_table(before, after))
    console.print(_decision_table(decisions, dict(comparison.sites)))
    for name, diff in comparison.outputs:
        console.print(Text(f"max abs difference of output '{name}': {diff:.3g}"))


def _ops_table(before: Counter[str], after: Counter[str]) -> Table:
    table = Table(title="ops before / after", title_justify="left")
    for column in ("op", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "op" else "right")
    for op in sorted(set(before) | set(after), key=lambda o: (-abs(after[o] - before[o]), o)):
        change = after[op] - before[op]
        table.add_row(Text(op), str(before[op]), str(after[op]), f"{change:+d}" if change else "")
    table.add_row("total", str(sum(before.values())), str(sum(after.values())), "")
    return table


def _decision_table(decisions: tuple[Decision, ...], diffs: dict[int, float]) -> Table:
    table = Table(title="sites", title_justify="left")
    for column in ("#", "output", "family", "decision", "why / remark", "max abs diff"):
        table.add_column(column, overflow="fold")
    for d in decisions:
        decision = f"rewritten as {d.action}" if d.rewritten else "skipped"
        diff = diffs.get(d.site.index)
        table.add_row(
            str(d.site.index), Text(d.site.output), d.site.family, Text(decision),
            Text(d.reason or "-"), "-" if diff is None else f"{diff:.3g}",
        )  # fmt: skip
    return table


def summary_line(out: Path, decisions: tuple[Decision, ...], comparison: Comparison) -> str:
    """One line: what was written, how many sites were rewritten, the largest difference."""
    done = [d for d in decisions if d.rewritten]
    kinds = sorted({d.action.split(" ")[0] for d in done})
    as_what = f" as {', '.join(kinds)}" if kinds else ""
    return (
        f"wrote {out}: {len(done)} of {len(decisions)} site(s) rewritten{as_what}; "
        f"max abs output difference {comparison.max_abs_diff:.3g}"
    )
