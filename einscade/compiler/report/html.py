"""The ``index.html`` of an explain report: one self-contained page (inline style, relative
links, pictures as ``<img>``), rendered from the facts ``explain`` also writes as JSON."""

from __future__ import annotations

from html import escape

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
       padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 8px 10px; overflow-x: auto;
      font-size: 12px; line-height: 1.35; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen td { background: #e8f1fb; font-weight: 600; }
.error { color: #b42318; } .muted { color: #666; } img { max-width: 100%; border: 1px solid #eee; }
pre.long { max-height: 520px; overflow: auto; }
nav a { margin-right: 12px; } figure { margin: 12px 0; } figcaption { color: #555; }
"""


def render(facts: dict) -> str:  # type: ignore[type-arg]
    """The whole page."""
    body = [
        f"<h1>einscade explain: @{escape(facts['title'])}</h1>",
        _nav(),
        _summary(facts),
        _cascade(facts),
        _pipeline(facts["pipeline"], facts["ir"]["final"], facts["pictures"]),
        _passes(facts["pass_count"]),
        _work(facts["work"]),
        _layout(facts["layout"], facts["pictures"]),
        _kernel(facts["kernel"]),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>einscade explain: {escape(facts['title'])}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


_SECTIONS = (
    ("summary", "Summary"),
    ("cascade", "Cascade"),
    ("pipeline", "Pipeline"),
    ("passes", "Pass count"),
    ("work", "Work"),
    ("layout", "Layout"),
    ("kernel", "Kernel"),
)


def _nav() -> str:
    return "<nav>" + "".join(f'<a href="#{k}">{t}</a>' for k, t in _SECTIONS) + "</nav>"


def _h2(key: str) -> str:
    return f'<h2 id="{key}">{dict(_SECTIONS)[key]}</h2>'


def _table(
    header: list[str] | None, rows: list[list[object]], chosen: list[bool] | None = None
) -> str:
    """A table (``header=None``: none); ints and floats right-aligned and formatted, other
    cells escaped text (cells already holding markup are passed as ``Markup``)."""
    lines = ["<table>"]
    if header is not None:
        lines.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
    for k, row in enumerate(rows):
        css = ' class="chosen"' if chosen and chosen[k] else ""
        lines.append(f"<tr{css}>" + "".join(_cell(c) for c in row) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


class Markup(str):
    """A cell that is HTML already."""


def _cell(value: object) -> str:
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{'yes' if value else ''}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.3g}</td>'
    return f"<td>{escape(str(value))}</td>"


def _link(href: str, text: str | None = None) -> Markup:
    return Markup(f'<a href="{escape(href)}">{escape(text or href)}</a>')


def _figure(picture: dict | None, alt: str) -> str:  # type: ignore[type-arg]
    if not picture:
        return ""
    caption = picture.get("caption", "")
    return (
        f'<figure><a href="{escape(picture["file"])}"><img src="{escape(picture["file"])}" '
        f'alt="{escape(alt)}"></a><figcaption>{escape(caption)}</figcaption></figure>'
    )


def _pre(text: str, css: str = "") -> str:
    return f'<pre class="{css}">{escape(text)}</pre>' if css else f"<pre>{escape(text)}</pre>"


def _summary(facts: dict) -> str:  # type: ignore[type-arg]
    rows: list[list[object]] = []
    counts = facts["pass_count"]
    if counts is not None:
        numbers = " → ".join(f"{s['passes']} ({s['stage']})" for s in counts["stages"])
        rows.append([f"passes over {counts['rank']}", numbers])
    layout = facts["layout"]
    rows.append(["layout", layout.get("chosen") or Markup(_error(layout["error"]))])
    kernel = facts["kernel"]
    if "file" in kernel:
        rows.append(
            [
                "kernel",
                Markup(
                    f"{_link(kernel['file'])} ({kernel['lines']} lines, {escape(kernel['dtype'])})"
                ),
            ]
        )
    else:
        rows.append(["kernel", Markup(_error(kernel["error"]))])
    rows.append(["data", _link("report.json")])
    command = (
        f"<p>Reproduce: <code>{escape(facts['command'])}</code></p>" if facts["command"] else ""
    )
    sizes = ", ".join(f"{k}={v}" for k, v in facts["sizes"].items())
    return (
        _h2("summary")
        + command
        + _table(None, rows)
        + f'<p class="muted">Example sizes: {escape(sizes)}</p>'
    )


def _error(text: str) -> str:
    return f'<span class="error">{escape(text)}</span>'


def _reduce_text(statement: dict) -> str:  # type: ignore[type-arg]
    reduce = statement["reduce"]
    return "" if reduce is None else f"{reduce['op']}({', '.join(reduce['ranks'])})"


def _graph_caption(graph: dict) -> str:  # type: ignore[type-arg]
    shapes = (
        "boxes are inputs and outputs, ellipses inner tensors, rounded boxes statements"
        if graph["renderer"] == "dot"
        else "tensors have dark edges, statements grey ones"
    )
    return (
        f"Dataflow ({graph['renderer']}): {shapes}; colour = the pass that produces a tensor, "
        "red outline = live across passes, grey area = an iterate block."
    )


def _cascade(facts: dict) -> str:  # type: ignore[type-arg]
    rows = [
        [s["target"], ", ".join(s["ranks"]), _reduce_text(s), s["predicate"] or ""]
        for s in facts["statements"]
    ]
    graph = facts["pictures"].get("dataflow_input")
    return (
        _h2("cascade")
        + _pre(facts["ir"]["input"])
        + _table(["tensor", "ranks", "reduce", "predicate"], rows)
        + (_figure({**graph, "caption": _graph_caption(graph)}, "dataflow graph") if graph else "")
    )


def _pipeline(pipeline: dict, final: str, pictures: dict) -> str:  # type: ignore[type-arg]
    parts = [
        _h2("pipeline"),
        f"<p>Spec: <code>{escape(pipeline['spec'])}</code> "
        f"(default pipeline <code>{escape(pipeline['default'])}</code> plus tiling). "
        f"Input: {_link(pipeline['input_file'])}; re-run: {_link(pipeline['repro'])}.</p>",
    ]
    if pipeline["tile_error"]:
        parts.append(f"<p>{_error('Tiling failed: ' + pipeline['tile_error'])}</p>")
    rows = [
        [
            s["index"],
            _link(s["file"], s["spec"]),
            s["stage"],
            s["ms"],
            s["changed"],
            s["rewrites"],
            s["passes"],
        ]
        for s in pipeline["steps"]
    ]
    header = ["#", "pass (IR after it)", "stage", "ms", "changed", "rewrites", "passes after"]
    parts.append(_table(header, rows))
    for step in pipeline["steps"]:
        notes = "".join(
            f"<li><b>{escape(n['kind'])}</b>: {escape(n['message'])}</li>" for n in step["notes"]
        )
        changed = "changed" if step["changed"] else "unchanged"
        parts.append(
            f"<details><summary>{step['index']:02d} {escape(step['spec'])}: {changed}, "
            f"{len(step['notes'])} notes</summary>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + _pre(step["text"])
            + "</details>"
        )
    parts += ["<h3>Final IR</h3>", _pre(final)]
    graph = pictures.get("dataflow_final")
    if graph:
        caption = "After the passes. " + _graph_caption(graph)
        parts.append(_figure({**graph, "caption": caption}, "dataflow after the passes"))
    return "\n".join(parts)


def _passes(counts: dict | None) -> str:  # type: ignore[type-arg]
    if counts is None:
        return _h2("passes") + '<p class="muted">No softmax rank to count passes over.</p>'
    rows = []
    for stage in counts["stages"]:
        live = ", ".join(
            f"{t['tensor']} (pass {t['produced_in']} → {', '.join(map(str, t['read_in']))})"
            for t in stage["live_across"]
        )
        rows.append([stage["stage"], stage["passes"], live or "none"])
    first = counts["stages"][0]
    tensors = [
        [name, first["statement_pass"].get(name), avail]
        for name, avail in first["availability"].items()
    ]
    return (
        _h2("passes") + f"<p>Passes over rank <code>{escape(counts['rank'])}</code> "
        "(FuseMax's count: a tensor read in a later pass than it is made in is live "
        "across passes: buffered whole or recomputed).</p>"
        + _table(["stage", "passes", "live across passes"], rows)
        + "<details><summary>Input: pass and availability of each tensor</summary>"
        + _table(["tensor", "pass", "available"], tensors)
        + "</details>"
    )


def _work(work: dict) -> str:  # type: ignore[type-arg]
    if "error" in work:
        return _h2("work") + f"<p>{_error(work['error'])}</p>"
    rows = [
        [
            r["tensor"],
            ", ".join(r["ranks"]),
            " x ".join(map(str, r["shape"])) or "scalar",
            r["points"],
            r["flops"],
            r["masked"],
        ]
        for r in work["rows"]
    ]
    sizes = ", ".join(f"{k}={v}" for k, v in work["sizes"].items())
    return (
        _h2("work")
        + _table(["tensor", "ranks", "shape", "points", "flops", "masked"], rows)
        + f"<p>Total dense work: {work['total_flops']:,} flops at {escape(sizes)}.</p>"
    )


def _layout(layout: dict, pictures: dict) -> str:  # type: ignore[type-arg]
    if "error" in layout:
        return _h2("layout") + f"<p>{_error('No block layout: ' + layout['error'])}</p>"
    modelled = any(c["time_us"] is not None for c in layout["candidates"])
    header = ["candidate", "empty", "partial", "full", "computed pairs", "computed / useful"]
    header += ["modelled µs", "bound by", "estimated from"] if modelled else []
    rows = []
    for c in layout["candidates"]:
        row = [c["label"], c["empty"] if c["empty"] is not None else "", c["partial"], c["full"],
               c["computed"], c["ratio"]]  # fmt: skip
        rows.append(
            row + ([c["time_us"], c["limit"], c["estimate"] or "exact"] if modelled else [])
        )
    notes = "".join(f"<li>{escape(n)}</li>" for n in layout["notes"])
    useful, dense = layout["useful"], layout["dense"]
    return (
        _h2("layout")
        + f"<p>Chosen by the {escape(layout['chooser'])}: <b>{escape(layout['chosen'])}</b>, "
        + f"{layout['query_tiles']:,} query tiles; the IR is tiled with "
        + f"<code>{escape(layout['tile_spec'])}</code>. Useful (allowed) pairs: {useful:,} of "
        + f"{dense:,} ({100 * useful / max(dense, 1):.2f}%).</p>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + _table(header, rows, [c["chosen"] for c in layout["candidates"]])
        + '<p class="muted">Counts are per batch and head; empty tiles only in grid key mode '
        + "(a key box per query tile leaves nothing out). Estimated rows scale a sample of "
        + "query tiles to all of them; the chosen row is classified fully.</p>"
        + _figure(pictures.get("block_map"), "block map")
        + _figure(pictures.get("mask"), "mask of one query")
    )


def _kernel(kernel: dict) -> str:  # type: ignore[type-arg]
    if "error" in kernel:
        return _h2("kernel") + f"<p>{_error(kernel['error'])}</p>"
    return (
        _h2("kernel") + f"<p>{_link(kernel['file'])}: Triton kernel "
        f"<code>{escape(kernel['name'])}</code>, {escape(kernel['dtype'])} storage, "
        f"{escape(kernel['schedule'])} schedule.</p>" + _pre(kernel["text"], "long")
    )
