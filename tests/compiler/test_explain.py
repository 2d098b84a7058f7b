"""``einscade explain`` report folders and ``einscade show --format json``.

A report is built once per module (small 2-D neighborhood attention) and checked for its
files, IR dumps that parse back, well-formed HTML whose links all resolve, pictures that
decode, and facts that match the analyses. Headless chromium renders the page when it is
installed (skipped otherwise). The picture and graph helpers are checked on known inputs.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from einscade.compiler.cli import main
from einscade.compiler.explain import explain
from einscade.compiler.report.dataflow import compact, dataflow_graph, draw_dataflow, to_dot
from einscade.compiler.report.layouts import default_tiles, layout_report
from einscade.compiler.report.pictures import (
    EMPTY,
    FULL,
    PARTIAL,
    downsample_states,
    query_mask,
    tile_states,
)
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir import load, parse, parse_expr, print_cascade
from einscade.passes.analysis.blocks import classify
from einscade.passes.analysis.masks import attention_mask
from einscade.passes.analysis.pass_count import pass_count

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NA_ARGS = ["neighborhood_2d", "--grid", "14x14", "--kernel", "3x3"]
VOID = {"meta", "img", "br", "hr", "link", "input"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("report")
    assert main(["explain", *NA_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def facts(report: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((report / "report.json").read_text())


class _Checker(HTMLParser):
    """Tag balance (void elements aside) and every href/src."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        attributes = dict(attrs)
        if "href" in attributes:
            self.links.append(attributes["href"])
        if tag == "img":
            self.images.append(attributes["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()


def parsed_html(report: Path) -> _Checker:
    checker = _Checker()
    checker.feed((report / "index.html").read_text())
    checker.close()
    return checker


def test_report_has_every_file(report: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    names = {p.name for p in report.iterdir()}
    for name in ("index.html", "report.json", "kernel.py", "block-map.png", "mask.png",
                 "dataflow-input.png", "dataflow-final.png"):  # fmt: skip
        assert name in names
    dumps = sorted(p.name for p in (report / "ir").glob("*.ecas"))
    assert dumps[0] == "00-input.ecas" and dumps[-1] == "07-dce.ecas"
    assert [d.split("-", 1)[1] for d in dumps[1:]] == [
        "defer-div.ecas", "associate.ecas", "chunk-linear.ecas", "online-softmax.ecas",
        "dce.ecas", "tile.ecas", "dce.ecas",
    ]  # fmt: skip
    assert (report / "ir" / "repro.py").exists()
    assert "def neighborhood_attention_kernel(" in (report / "kernel.py").read_text()


def test_ir_dumps_parse_back_and_end_at_the_final_ir(report: Path, facts: dict) -> None:  # type: ignore[type-arg]
    for dump in (report / "ir").glob("*.ecas"):
        text = dump.read_text()
        assert print_cascade(parse(text)) == text
    assert load(report / "ir" / "07-dce.ecas") == parse(facts["ir"]["final"])
    assert "iterate m1 {" in facts["ir"]["final"]


def check_page(report: Path) -> _Checker:
    """Tags balance, every link and image is relative and resolves, anchors exist."""
    checker = parsed_html(report)
    assert checker.stack == []
    files = [link for link in checker.links if not link.startswith("#")]
    for target in files + checker.images:
        assert not target.startswith(("/", "http")), f"{target} is not relative"
        assert (report / target).is_file(), f"{target} does not exist"
    anchors = {link[1:] for link in checker.links if link.startswith("#")}
    page = (report / "index.html").read_text()
    assert all(f'id="{a}"' in page for a in anchors)
    return checker


def test_html_is_well_formed_and_links_resolve(report: Path) -> None:
    checker = check_page(report)
    assert {"kernel.py", "ir/00-input.ecas", "ir/repro.py", "report.json"} <= set(checker.links)
    assert set(checker.images) == {"block-map.png", "mask.png", "dataflow-input.png",
                                   "dataflow-final.png"}  # fmt: skip


def test_pictures_decode_and_stay_small(report: Path) -> None:
    for name in ("block-map.png", "mask.png", "dataflow-input.png", "dataflow-final.png"):
        with Image.open(report / name) as image:
            image.load()
            assert image.size[0] <= 1200 and image.size[1] <= 2000, (name, image.size)
            assert np.asarray(image.convert("L")).std() > 5, f"{name} is blank"


def test_facts_match_the_analyses(facts: dict) -> None:  # type: ignore[type-arg]
    counts = facts["pass_count"]
    assert [s["passes"] for s in counts["stages"]] == [3, 1, 1]
    live = {t["tensor"]: t["read_in"] for t in counts["stages"][0]["live_across"]}
    assert live == {"QK": [2], "SN": [3]}
    layout = facts["layout"]
    chosen = [c for c in layout["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["label"] == layout["chosen"]
    assert chosen[0]["estimate"] is None and chosen[0]["partial"] + chosen[0]["full"] > 0
    assert layout["tile_spec"] == chosen[0]["tile_spec"] and layout["chooser"]
    assert len(layout["candidates"]) >= 4
    # 14x14 grid, 3x3 window shifted inward: every query sees exactly 9 keys.
    assert layout["useful"] == 196 * 9 and layout["dense"] == 196 * 196
    for c in layout["candidates"]:
        assert c["ratio"] >= 1.0
    assert facts["pipeline"]["spec"].endswith(f"{layout['tile_spec']},dce")
    assert facts["kernel"]["dtype"] == "float16"
    assert facts["sizes"]["PX"] == 14 and "N" not in facts["sizes"]


def test_command_prints_where_the_report_is(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ecas = tmp_path / "plain.ecas"
    ecas.write_text("cascade @plain(X[n]) -> (Y) {\n  Y[] = X[n] :: sum(n)\n}\n")
    out = tmp_path / "r"
    assert main(["explain", str(ecas), "--size", "N=8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'index.html'}" in printed
    assert "layout: attention_mask: @plain has no rank 'p'" in printed
    facts = json.loads((out / "report.json").read_text())
    assert facts["pass_count"] is None
    assert "tile" in facts["pipeline"]["tile_error"]
    assert facts["kernel"]["error"].startswith("not generated: tiling failed")
    assert (out / "ir" / "06-tile.failed.txt").read_text().startswith("pass 'tile' failed")
    check_page(out)


def test_unknown_builtin_fails_with_its_name(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["explain", "nope"]) == 1
    assert "no built-in cascade 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_headless_browser_renders_the_report(report: Path) -> None:
    shot = report / "screenshot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1200,2400", f"--screenshot={shot}", (report / "index.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (2400, 1200)
    # Text and pictures drawn: far from a blank page, and the top is not all one colour.
    assert pixels.std() > 20 and (pixels[:400] < 128).mean() > 0.005


# -- show --format json ------------------------------------------------------------------------


def test_show_json_document(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["show", *NA_ARGS, "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["name"] == "neighborhood_attention"
    assert parse(document["text"]).name == "neighborhood_attention"
    first = document["statements"][0]
    assert first["target"] == "QK" and first["ranks"] == ["b", "h", "m", "p"]
    assert first["reduce"] == {"op": "sum", "ranks": ["e"]}
    assert first["predicate"].startswith("start_x <= mx")
    parse_expr(first["predicate"])
    assert document["statements"][1]["predicate"] is None
    assert document["pass_count"]["passes"] == 3
    work = document["work"]
    assert [r["tensor"] for r in work["rows"]] == ["QK", "GM", "SN", "SD", "A", "AV"]
    assert work["rows"][0]["shape"] == [1, 8, 196, 196] and work["rows"][0]["masked"]
    assert work["total_flops"] == sum(r["flops"] for r in work["rows"])


def test_show_text_is_unchanged_by_default(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["show", *NA_ARGS]) == 0
    assert capsys.readouterr().out.startswith("cascade @neighborhood_attention(")


# -- pictures and graphs on known inputs -------------------------------------------------------


def test_downsampling_keeps_pure_blocks_and_marks_mixed_ones_partial() -> None:
    states = np.zeros((4, 600), dtype=np.uint8)
    states[:, 300:] = FULL
    states[0, 0] = PARTIAL
    states[1, 599] = EMPTY
    shown, block = downsample_states(states, max_cells=256)
    assert block == (1, 3) and shown.shape == (4, 200)
    assert shown[0, 0] == PARTIAL and shown[1, 0] == EMPTY and shown[0, 199] == FULL
    assert shown[1, 199] == PARTIAL and shown[2, 100] == FULL and shown[2, 99] == EMPTY
    assert downsample_states(states[:, :10])[1] == (1, 1)


def test_tile_states_of_causal_layout() -> None:
    cascade = softmax_attention(causal=True)
    layout = classify(attention_mask(cascade), {"P": 256, "M": 256}, None, None, (128,), (64,))
    states = tile_states(layout)
    assert states.shape == (2, 4)  # query tiles of 128 x key tiles of 64
    assert states.tolist() == [[PARTIAL, PARTIAL, EMPTY, EMPTY], [FULL, FULL, PARTIAL, PARTIAL]]


def test_box_mode_states_cover_each_query_tiles_keys() -> None:
    cascade = neighborhood_attention(grid=(8, 8), kernel=(3, 3))
    layout = classify(attention_mask(cascade), {}, None, None, (4, 8), key_mode="box")
    states = tile_states(layout)
    assert states.shape == (len(layout.key_tiles), 64)
    for i, tiles in enumerate(layout.key_tiles):
        assert (states[i] != EMPTY).sum() == sum(t.size for t in tiles)


def test_default_rule_without_the_cost_model(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "einscade.passes.analysis.layout", None)  # import fails
    cascade = neighborhood_attention(grid=(14, 14), kernel=(3, 3))
    report = layout_report(cascade, {})
    assert report.chooser == "default rule (no cost model installed)"
    assert [c.label for c in report.candidates] == [
        "query 8x16, key box per tile", "query 8x16, key tiles 64", "query 128, key tiles 64",
        "query 64, key tiles 64",
    ]  # fmt: skip
    assert report.chosen_index == 0 and report.tile_spec == "tile{p=8x16,m=64}"
    assert all(c.time_us is None and c.estimate is None for c in report.candidates)
    assert report.layout.num_partial == report.chosen.partial
    assert all(c.computed >= report.useful == 196 * 9 for c in report.candidates)


def test_cost_model_candidates_are_estimated_except_the_chosen_one() -> None:
    pytest.importorskip("einscade.passes.analysis.layout")
    report = layout_report(softmax_attention(causal=True), {"P": 1024, "M": 1024})
    assert report.chooser.startswith("cost model")
    assert report.chosen_index == 0  # the cheapest estimate is classified fully
    assert report.chosen.estimate is None and report.chosen.time_us > 0
    assert report.chosen.computed == sum(
        math.ceil(math.prod(s) / 16) * 16 * sum(math.ceil(t.size / 16) * 16 for t in row)
        for s, row in zip(report.layout.query_shapes, report.layout.key_tiles, strict=True)
    )  # padded to the matrix-multiply granularity, as the model counts
    assert report.useful == 1024 * 1025 // 2
    assert report.tile_spec.startswith("tile{p=")


def test_default_tiles_are_powers_of_two_boxes_on_grids() -> None:
    assert default_tiles((56, 56))[0] == ((8, 16), None, "box")
    assert default_tiles((14, 5))[0] == ((8, 8), None, "box")
    assert default_tiles((4, 8, 8))[0] == ((2, 4, 8), None, "box")
    assert default_tiles((1024,))[0] == ((128,), (64,), "grid")


@pytest.mark.parametrize("grid", [(6, 10), (3, 4, 5), (40,)])
def test_query_mask_draws_every_grid_rank(tmp_path: Path, grid) -> None:  # type: ignore[no-untyped-def]
    kernel = tuple(min(3, n) for n in grid)
    sizes = {"P": grid[0], "M": grid[0]} if len(grid) == 1 else {}
    bound = layout_report(neighborhood_attention(grid=grid, kernel=kernel), sizes).bound
    path = tmp_path / "mask.png"
    caption = query_mask(bound, path)
    with Image.open(path) as image:
        image.load()
    centre = ", ".join(f"{axis}={n // 2}" for axis, n in zip(bound.query.names, grid, strict=True))
    assert f"query {centre}: {math.prod(kernel)} keys" in caption


def test_lookup_masks_get_example_documents() -> None:
    cascade = softmax_attention(documents=True)
    report = layout_report(cascade, {"P": 100, "M": 100})
    assert report.notes == ("lookup doc: example values, documents of [10, 25, 20, 45] tokens",)
    assert report.useful == 10**2 + 25**2 + 20**2 + 45**2


def test_dataflow_graph_of_the_one_pass_example(tmp_path: Path) -> None:
    cascade = load(EXAMPLES / "attention_1pass.ecas")
    graph = dataflow_graph(cascade, pass_count(cascade, "m"))
    tensors = {n for n, d in graph.nodes(data=True) if d["kind"] == "tensor"}
    assert tensors == {f"t:{name}" for name in ("Q", "K", "V", "RM", "RD", "RNV", "BQK", "LM",
                                                "SLN", "SLD", "SLNV", "PRM", "AV")}  # fmt: skip
    statements = [n for n, d in graph.nodes(data=True) if d["kind"] == "statement"]
    assert len(statements) == len(cascade.einsums())
    in_loop = {n for n, d in graph.nodes(data=True) if d["cluster"] == "m1"}
    assert "t:RM" in in_loop and "t:AV" not in in_loop
    assert graph.has_edge("t:RM", "s:5") and graph.has_edge("s:5", "t:RM")  # the update
    assert not any(d["live"] for _, d in graph.nodes(data=True))  # one pass: nothing live
    assert "subgraph cluster_0" in to_dot(graph, "t") and 'label="iterate m1"' in to_dot(graph, "t")
    assert draw_dataflow(graph, tmp_path / "g.png", "t", use_dot=False) == "matplotlib"
    with Image.open(tmp_path / "g.png") as image:
        image.load()


def test_dataflow_marks_tensors_live_across_passes() -> None:
    cascade = load(EXAMPLES / "attention_3pass.ecas")
    graph = dataflow_graph(cascade, pass_count(cascade, "m"))
    live = {n for n, d in graph.nodes(data=True) if d.get("live")}
    assert live == {"t:QK", "t:SN"}
    assert graph.nodes["t:AV"]["role"] == "output" and graph.nodes["t:Q"]["role"] == "input"
    assert compact(cascade.einsums()[2].value) == "exp(QK - GM)"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_dot_renders_the_graph(tmp_path: Path) -> None:
    cascade = load(EXAMPLES / "attention_1pass.ecas")
    graph = dataflow_graph(cascade, pass_count(cascade, "m"))
    assert draw_dataflow(graph, tmp_path / "g.png", "t", use_dot=True) == "dot"
    with Image.open(tmp_path / "g.png") as image:
        image.load()


def test_explain_api_returns_the_index(tmp_path: Path) -> None:
    cascade = softmax_attention(causal=True)
    index = explain(cascade, {"P": 128, "M": 128, "E": 16, "F": 16}, tmp_path, use_dot=False)
    assert index == tmp_path / "index.html"
    facts = json.loads((tmp_path / "report.json").read_text())
    assert facts["pictures"]["dataflow_input"]["renderer"] == "matplotlib"
    assert facts["layout"]["useful"] == 128 * 129 // 2


# -- the worked example of docs/writing-a-variant.md -------------------------------------------

VARIANT_DOC = Path(__file__).resolve().parents[2] / "docs" / "writing-a-variant.md"


def _doc_blocks(language: str) -> list[str]:
    text = VARIANT_DOC.read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_the_documented_variant_is_softplus_attention(tmp_path: Path) -> None:
    from einscade.codegen.reference import reference
    from einscade.frontends.variants import softplus_attention

    source = _doc_blocks("ecas")[0]
    (tmp_path / "softplus.ecas").write_text(source)
    cascade = load(tmp_path / "softplus.ecas")
    shown = _doc_blocks("console")[2]  # the `einscade show` block prints the cascade
    assert print_cascade(cascade) in shown
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 4, generator=g, dtype=torch.float64) for _ in range(3))
    expected = reference(softplus_attention(causal=True), Q=q, K=k, V=v)
    torch.testing.assert_close(reference(cascade, Q=q, K=k, V=v), expected)


def test_documentation_links_resolve() -> None:
    repo = VARIANT_DOC.parents[1]
    pages = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
