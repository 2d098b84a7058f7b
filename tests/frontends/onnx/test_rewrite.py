"""``einscade onnx rewrite``: both output modes on exported models, checked in onnxruntime."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import einscade.frontends.onnx.rewrite as rewrite_module
from einscade.compiler.cli import main
from einscade.frontends.onnx import OnnxModelError, find_sites, load_model, rewrite_model
from einscade.ir import parse
from tests.frontends.onnx import models

# (exported model, mode, sites rewritten): every site of these models is expressible.
CASES = [
    ("hand_d18", "function", 1),
    ("hand_d18", "onnx-attention", 1),
    ("hand_legacy", "function", 1),
    ("hand_legacy", "onnx-attention", 1),
    ("sdpa_d18", "function", 2),
    ("sdpa_d18", "onnx-attention", 2),
    ("sdpa_d23", "function", 2),
    ("sdpa_d23", "onnx-attention", 0),  # already Attention ops: kept, with the reason
]


def _ops(path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)


@pytest.mark.parametrize(("name", "mode", "rewritten"), CASES)
def test_rewrite_matches_onnxruntime_and_leaves_input_alone(exported, tmp_path, name, mode,
                                                            rewritten):  # fmt: skip
    source = exported(name)
    before = models.fingerprint(source.parent)
    out = tmp_path / "out.onnx"
    result = rewrite_model(source, out, mode)
    assert models.fingerprint(source.parent) == before
    assert sum(d.rewritten for d in result.decisions) == rewritten
    feeds = models.feeds_for(source)
    for a, b in zip(models.run(source, feeds), models.run(out, feeds), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".einscade-")]
    if mode == "onnx-attention":
        assert _ops(out)["Attention"] == len(result.decisions)
        assert _ops(out)["Softmax"] == 0
        assert onnx.load(out, load_external_data=False).opset_import[0].version >= 23
    if mode == "function" and name != "sdpa_d23":
        assert _ops(out)["Softmax"] == 0


@pytest.mark.parametrize("name", ["hand_d18", "sdpa_d18", "sdpa_d23"])
def test_function_mode_carries_the_cascade_and_reimports(exported, tmp_path, name):
    out = tmp_path / "out.onnx"
    result = rewrite_model(exported(name), out, "function")
    model = ir.load(out)
    functions = [f for f in model.functions.values() if f.domain == "einscade"]
    assert len(functions) == len(result.decisions)
    calls = [n for n in model.graph if n.domain == "einscade"]
    for call, decision in zip(calls, result.decisions, strict=True):
        assert parse(call.attributes["cascade"].as_string()) == decision.site.cascade
    again = find_sites(load_model(out).model)
    assert [s.container.split("::")[0] for s in again.sites] == ["function einscade"] * len(calls)
    assert [s.cascade for s in again.sites] == [d.site.cascade for d in result.decisions]


def test_attention_ops_are_kept_in_onnx_attention_mode_with_reason(exported, tmp_path):
    result = rewrite_model(exported("sdpa_d23"), tmp_path / "out.onnx", "onnx-attention")
    assert [d.reason for d in result.decisions] == ["already a standard Attention op"] * 2


def test_3d_attention_op_and_symbolic_chain(tmp_path):
    chain, att = tmp_path / "chain.onnx", tmp_path / "att3d.onnx"
    onnx.save(models.chain_model(), chain)
    onnx.save(models.attention_3d_model(), att)
    for source in (chain, att):
        for mode in ("function", "onnx-attention"):
            out = tmp_path / f"{source.stem}_{mode}.onnx"
            rewrite_model(source, out, mode)
            feeds = models.feeds_for(source)
            np.testing.assert_allclose(models.run(out, feeds)[0], models.run(source, feeds)[0],
                                       atol=1e-5, rtol=1e-4)  # fmt: skip


def test_names_that_are_not_identifiers(tmp_path, capsys):
    names = {"q": "q input/0", "k": "k[0]", "v": "v:value", "mask": "[bold]mask[/bold]",
             "w": "weights ✓", "out": "out put", "scale": "scale (s)"}  # fmt: skip
    source = tmp_path / "names.onnx"
    onnx.save(models.chain_model(names), source)
    assert main(["onnx", "inspect", str(source)]) == 0
    assert "[bold]mask[/bold]" in capsys.readouterr().out  # printed as is, not as markup
    for mode in ("function", "onnx-attention"):
        out = tmp_path / f"out_{mode}.onnx"
        assert main(["onnx", "rewrite", str(source), "-o", str(out), "--to", mode]) == 0
        feeds = models.feeds_for(source)
        np.testing.assert_allclose(models.run(out, feeds)[0], models.run(source, feeds)[0],
                                   atol=1e-5, rtol=1e-4)  # fmt: skip


def test_cli_inspect_and_rewrite_report(exported, tmp_path, capsys):
    source = exported("hand_d18")
    assert main(["onnx", "inspect", str(source)]) == 0
    out = capsys.readouterr().out
    assert "1 attention site(s)" in out and "cascade @softmax_attention(" in out
    target = tmp_path / "out.onnx"
    assert main(["onnx", "rewrite", str(source), "-o", str(target), "--report"]) == 0
    out = capsys.readouterr().out
    for text in ("ops before / after", "einscade::softmax_attention", "rewritten as function",
                 "max abs difference of output", f"wrote {target}: 1 of 1 site(s)"):  # fmt: skip
        assert text in out, text


def test_failed_validation_names_the_site_and_writes_nothing(exported, tmp_path, monkeypatch):
    make_nodes = rewrite_module._attention_nodes

    def wrong_scale(site):
        nodes, out = make_nodes(site)
        attention = next(n for n in nodes if n.op_type == "Attention")
        attention.attributes["scale"] = ir.Attr("scale", ir.AttributeType.FLOAT, 3.0)
        return nodes, out

    monkeypatch.setattr(rewrite_module, "_attention_nodes", wrong_scale)
    with pytest.raises(OnnxModelError, match=r"^site 0 \(output 'matmul_1'\): onnxruntime outputs"):
        rewrite_model(exported("hand_d18"), tmp_path / "out.onnx", "onnx-attention")
    assert list(tmp_path.iterdir()) == []


def test_output_may_not_overwrite_input(exported, tmp_path):
    source = tmp_path / "hand.onnx"
    shutil.copytree(exported("hand_d18").parent, tmp_path, dirs_exist_ok=True)
    before = models.fingerprint(tmp_path)
    with pytest.raises(OnnxModelError, match="would overwrite the input"):
        rewrite_model(source, tmp_path / "." / "hand.onnx")
    assert models.fingerprint(tmp_path) == before


def test_kv_cache_attention_op_is_found_and_kept(tmp_path):
    source = tmp_path / "decode.onnx"
    onnx.save(models.kv_cache_attention_model(), source)
    (site,) = find_sites(load_model(source).model).sites
    assert site.causal == "bottom_right" and "K and V are concatenated" in site.notes[0]
    result = rewrite_model(source, tmp_path / "out.onnx", "function")
    assert "present_key/present_value" in result.decisions[0].reason
    assert _ops(tmp_path / "out.onnx") == Counter({"Attention": 1})


def test_nothing_expressible_keeps_the_opset(tmp_path):
    source = tmp_path / "runtime_scale.onnx"
    onnx.save(models.chain_model(scale_input=True), source)
    result = rewrite_model(source, tmp_path / "out.onnx", "onnx-attention")
    (decision,) = result.decisions
    assert not decision.rewritten and "computed at run time" in decision.reason
    assert onnx.load(tmp_path / "out.onnx").opset_import[0].version == 18
