"""A cascade as a dataflow graph: tensors and statements as nodes, ``iterate`` blocks as
clusters, tensors coloured by the pass over the softmax rank that produces them and outlined
red when they are live across passes.

:func:`dataflow_graph` builds the graph (networkx); :func:`draw_dataflow` renders it with
graphviz ``dot`` when it is on ``PATH`` (its clusters and layered layout read best) and
with matplotlib otherwise (layers from program order, clusters as shaded boxes).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import networkx as nx

from einscade.ir import print_expr
from einscade.ir.cascade import Cascade, Einsum, Iterate
from einscade.ir.expr import Access, Expr, Name, accesses, map_expr
from einscade.ir.scope import Scope
from einscade.passes.analysis.pass_count import PassReport

PASS_COLOURS = ("#ffffff", "#cfe3f7", "#d4efd0", "#fde2c4", "#ead7f2", "#f7d4d4")
_LIVE = "#d62728"
_LABEL_LIMIT = 34


def compact(expr: Expr) -> str:
    """An expression with tensor reads shown by name only: ``exp(QK - GM)``."""
    shown = map_expr(expr, lambda node: Name(node.tensor) if isinstance(node, Access) else None)
    text = print_expr(shown)
    return text if len(text) <= _LABEL_LIMIT else text[: _LABEL_LIMIT - 1] + "…"


def _statement_label(stmt: Einsum) -> str:
    lines = [compact(stmt.value)]
    if stmt.reduce is not None:
        lines.append(f":: {stmt.reduce.op}({', '.join(stmt.reduce.ranks)})")
    if stmt.predicate is not None:
        lines.append("if mask")
    return "\n".join(lines)


def dataflow_graph(cascade: Cascade, report: PassReport | None = None) -> nx.DiGraph:
    """Tensor nodes ``t:NAME`` and statement nodes ``s:K`` (program order), edges from each
    read tensor to its statement and from a statement to its target. Node attributes:
    ``kind``, ``label``, ``cluster`` (iterate rank or None), ``layer``, ``colour``, ``live``,
    ``role`` (input, output or inner) for tensors."""
    scope = Scope(cascade)
    graph = nx.DiGraph()
    live = {t.name for t in report.live_across} if report else set()
    passes = report.statement_pass if report else {}
    layer: dict[str, int] = {}
    for decl in cascade.inputs:
        _add_tensor(graph, decl.name, decl.ranks, "input", None, 0, passes, live)
        layer[f"t:{decl.name}"] = 0
    for k, (stmt, cluster) in enumerate(_statements(cascade)):
        node = f"s:{k}"
        reads = list(dict.fromkeys(a.tensor for a in _reads(stmt)))
        # An update reads its own previous generation: that edge does not order the layers.
        known = [layer[f"t:{t}"] for t in reads if t != stmt.target]
        layer[node] = 1 + max(known, default=0)
        graph.add_node(
            node,
            kind="statement",
            label=_statement_label(stmt),
            cluster=cluster,
            layer=layer[node],
            colour="#ffffff",
            live=False,
        )
        for tensor in reads:
            graph.add_edge(f"t:{tensor}", node)
        target = f"t:{stmt.target}"
        if target not in graph:
            role = "output" if stmt.target in cascade.outputs else "inner"
            info = scope.tensors[stmt.target]
            _add_tensor(graph, stmt.target, info.ranks, role, cluster, 0, passes, live)
        # An iterative tensor sits below its update, so that later readers come after it.
        layer[target] = max(layer.get(target, 0), layer[node] + 1)
        graph.nodes[target]["layer"] = layer[target]
        graph.add_edge(node, target)
    return graph


def _statements(cascade: Cascade) -> list[tuple[Einsum, str | None]]:
    found: list[tuple[Einsum, str | None]] = []
    for stmt in cascade.body:
        if isinstance(stmt, Iterate):
            found += [(inner, stmt.rank) for inner in stmt.body]
        else:
            found.append((stmt, None))
    return found


def _reads(stmt: Einsum) -> list[Access]:
    found = accesses(stmt.value)
    return found + (accesses(stmt.predicate) if stmt.predicate is not None else [])


def _add_tensor(
    graph: nx.DiGraph,
    name: str,
    ranks: tuple[str, ...],
    role: str,
    cluster: str | None,
    layer: int,
    passes: dict[str, int | None],
    live: set[str],
) -> None:
    made = passes.get(name)
    colour = PASS_COLOURS[min(made or 0, len(PASS_COLOURS) - 1)]
    graph.add_node(
        f"t:{name}",
        kind="tensor",
        label=f"{name}[{', '.join(ranks)}]",
        role=role,
        cluster=cluster,
        layer=layer,
        colour=colour,
        live=name in live,
    )


# -- rendering ---------------------------------------------------------------------------------


def draw_dataflow(graph: nx.DiGraph, path: Path, title: str, use_dot: bool | None = None) -> str:
    """Render ``graph`` to ``path`` (PNG); returns the renderer used (``dot`` or
    ``matplotlib``). ``use_dot=None`` uses graphviz when ``dot`` is on PATH."""
    if use_dot is None:
        use_dot = shutil.which("dot") is not None
    if use_dot:
        source = to_dot(graph, title)
        path.with_suffix(".dot").write_text(source)
        subprocess.run(
            ["dot", "-Tpng", "-Gdpi=72", "-o", str(path)],
            input=source.encode(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        return "dot"
    _draw_matplotlib(graph, path, title)
    return "matplotlib"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_node(node: str, data: dict) -> str:  # type: ignore[type-arg]
    if data["kind"] == "statement":
        style = 'shape=box, style="rounded", fontsize=10, color="#888888"'
    else:
        width = "2.5" if data["live"] else ("2" if data["role"] == "output" else "1")
        border = _LIVE if data["live"] else "#333333"
        shape = "ellipse" if data["role"] == "inner" else "box"
        style = (
            f'shape={shape}, style="filled", fillcolor="{data["colour"]}", '
            f'color="{border}", penwidth={width}, fontsize=11'
        )
    return f"  {_quote(node)} [label={_quote(data['label'])}, {style}];"


def to_dot(graph: nx.DiGraph, title: str) -> str:
    """The graph in graphviz's DOT language, one cluster per ``iterate`` block."""
    lines = [
        "digraph cascade {",
        "  rankdir=TB; nodesep=0.25; ranksep=0.3;",
        f"  label={_quote(title)}; labelloc=t; fontsize=12;",
    ]
    clusters: dict[str | None, list[str]] = {}
    for node, data in graph.nodes(data=True):
        clusters.setdefault(data["cluster"], []).append(_dot_node(node, data))
    lines += clusters.pop(None, [])
    for k, (rank, nodes) in enumerate(clusters.items()):
        lines.append(f"  subgraph cluster_{k} {{")
        lines.append(f'    label="iterate {rank}"; style="filled"; color="#f4f4f4";')
        lines += ["  " + n for n in nodes]
        lines.append("  }")
    lines += [f"  {_quote(a)} -> {_quote(b)};" for a, b in graph.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _draw_matplotlib(graph: nx.DiGraph, path: Path, title: str) -> None:
    from einscade.compiler.report.pictures import _pyplot

    plt = _pyplot()
    from matplotlib.patches import Rectangle

    position = nx.multipartite_layout(graph, subset_key="layer", align="horizontal", scale=1.0)
    position = {n: (x, -y) for n, (x, y) in position.items()}  # first layer on top
    layers = 1 + max(d["layer"] for _, d in graph.nodes(data=True))
    fig, ax = plt.subplots(figsize=(7.5, min(1.0 + 0.45 * layers, 16.0)), dpi=100)
    for rank in {d["cluster"] for _, d in graph.nodes(data=True)} - {None}:
        points = [position[n] for n, d in graph.nodes(data=True) if d["cluster"] == rank]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = Rectangle(
            (min(xs) - 0.12, min(ys) - 0.04),
            max(xs) - min(xs) + 0.24,
            max(ys) - min(ys) + 0.08,
            color="#f0f0f0",
            zorder=0,
        )
        ax.add_patch(box)
        ax.text(min(xs) - 0.11, max(ys) + 0.02, f"iterate {rank}", fontsize=7, color="#666666")
    nx.draw_networkx_edges(
        graph, position, ax=ax, arrowsize=8, width=0.7, edge_color="#999999", node_size=900
    )
    for node, data in graph.nodes(data=True):
        statement = data["kind"] == "statement"
        ax.text(
            *position[node],
            data["label"],
            ha="center",
            va="center",
            fontsize=6 if statement else 7,
            zorder=3,
            bbox={
                "boxstyle": "round,pad=0.25",
                "fc": data["colour"],
                "ec": _LIVE if data["live"] else ("#aaaaaa" if statement else "#333333"),
                "lw": 2.0 if data["live"] else 0.8,
            },
        )
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
